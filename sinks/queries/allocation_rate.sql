-- name: allocation_rate
-- group: scheduling
-- what: share of the GPUs allocated to jobs over time, for the cluster or per GPU model or zone, averaged over each step
-- param: since_s UInt32 = 86400      the last since_s seconds
-- param: step_s UInt32 = 3600        one row per step_s seconds (the mean of the worker's snapshots in it)
-- param: dimension String = cluster  cluster, gpu_model or zone
--
-- Reads the worker's snapshots (scheduling_kpis: allocation_rate, allocated_gpus, total_gpus,
-- one per KPI interval); a step starts at a multiple of step_s since the epoch.
SELECT toStartOfInterval(ts, toIntervalSecond({step_s:UInt32})) AS t, dimension, `group`,
       round(avgIf(value, kpi = 'allocation_rate'), 4) AS allocation_rate,
       round(avgIf(value, kpi = 'allocated_gpus'), 2) AS allocated_gpus,
       round(avgIf(value, kpi = 'total_gpus'), 2) AS total_gpus,
       countIf(kpi = 'allocation_rate') AS snapshots
FROM scheduling_kpis FINAL
WHERE kpi IN ('allocation_rate', 'allocated_gpus', 'total_gpus') AND dimension = {dimension:String}
  AND ts >= now64(3) - toIntervalSecond({since_s:UInt32})
GROUP BY t, dimension, `group`
HAVING snapshots > 0
ORDER BY dimension, `group`, t
