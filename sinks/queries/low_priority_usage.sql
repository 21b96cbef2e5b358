-- name: low_priority_usage
-- group: scheduling
-- what: how much of the allocated GPUs low-priority (preemptible) jobs hold over time, averaged over each step
-- param: since_s UInt32 = 86400   the last since_s seconds
-- param: step_s UInt32 = 3600     one row per step_s seconds (the mean of the worker's snapshots in it)
--
-- From the worker's snapshots (scheduling_kpis: allocation_share and allocated_gpus of priority
-- low, allocated_gpus of the cluster).
SELECT toStartOfInterval(ts, toIntervalSecond({step_s:UInt32})) AS t,
       round(avgIf(value, kpi = 'allocation_share' AND dimension = 'priority'), 4) AS low_priority_share,
       round(avgIf(value, kpi = 'allocated_gpus' AND dimension = 'priority'), 2) AS low_priority_gpus,
       round(avgIf(value, kpi = 'allocated_gpus' AND dimension = 'cluster'), 2) AS allocated_gpus,
       countIf(kpi = 'allocation_share') AS snapshots
FROM scheduling_kpis FINAL
WHERE ((kpi IN ('allocation_share', 'allocated_gpus') AND dimension = 'priority' AND `group` = 'low')
       OR (kpi = 'allocated_gpus' AND dimension = 'cluster'))
  AND ts >= now64(3) - toIntervalSecond({since_s:UInt32})
GROUP BY t
ORDER BY t
