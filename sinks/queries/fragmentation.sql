-- name: fragmentation
-- group: scheduling
-- what: free GPUs over time and how many of them are stranded on partly used nodes (unusable by a whole-node request), averaged over each step
-- param: since_s UInt32 = 86400   the last since_s seconds
-- param: step_s UInt32 = 3600     one row per step_s seconds (the mean of the worker's snapshots in it)
--
-- From the worker's snapshots (scheduling_kpis: free_gpus, stranded_gpus, stranded_share,
-- fragmented_nodes); stranded_max is the worst snapshot of the step.
SELECT toStartOfInterval(ts, toIntervalSecond({step_s:UInt32})) AS t,
       round(avgIf(value, kpi = 'free_gpus'), 2) AS free_gpus,
       round(avgIf(value, kpi = 'stranded_gpus'), 2) AS stranded_gpus,
       round(avgIf(value, kpi = 'stranded_share'), 4) AS stranded_share,
       round(avgIf(value, kpi = 'fragmented_nodes'), 2) AS fragmented_nodes,
       maxIf(value, kpi = 'stranded_gpus') AS stranded_max,
       countIf(kpi = 'free_gpus') AS snapshots
FROM scheduling_kpis FINAL
WHERE kpi IN ('free_gpus', 'stranded_gpus', 'stranded_share', 'fragmented_nodes') AND dimension = 'cluster'
  AND ts >= now64(3) - toIntervalSecond({since_s:UInt32})
GROUP BY t
ORDER BY t
