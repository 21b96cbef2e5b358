"""What-if scheduling: replay a cluster's jobs under other placement and queueing policies.

A discrete-event simulator of a GPU cluster (nodes with GPUs of one model, shareable in
thousandths, CPU and memory) that places the same jobs under several policies and reports what
each would have given: allocation, stranded GPUs, fragmentation, waits, usage by team.

Three ways in: ``fill`` (a trace without times, replayed as the FGD authors' simulator does:
pods arrive in a shuffled order, inflated past capacity, and never leave), ``trace`` (an
openb-style trace with submit and end times, with queueing) and records from the store (the
CLI floor reads them and hands plain records in). This package imports ``schemas`` only; it
never reaches for the agents, the streams, the sinks or the CLI.
"""
