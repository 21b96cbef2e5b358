"""Simulated collectors: a seeded cluster's GPUs, InfiniBand ports, scheduler and training steps.

They stand in for hardware and schedulers this machine lacks, behind the same
:class:`hpcinsight.agents.base.Collector` interface as the real ones, so the whole pipeline
(and the evaluation's fault scenarios) runs anywhere. :mod:`.workload` holds the jobs and
faults they share; each collector module registers its kind (``gpu_sim``, ``ib_sim``,
``scheduler_sim``, ``step_sim``).
"""
