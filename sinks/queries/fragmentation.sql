-- name: fragmentation
-- group: scheduling
-- what: free GPUs over time, how many are stranded on partly used nodes (unusable by a whole-node request) and FGD's expected fragmentation (unusable by the typical workload), averaged over each step
-- param: since_s UInt32 = 86400   the last since_s seconds
-- param: step_s UInt32 = 3600     one row per step_s seconds (the mean of the worker's snapshots in it)
--
-- From the worker's snapshots (scheduling_kpis: free_gpus, stranded_gpus, stranded_share,
-- fragmented_nodes); stranded_max is the worst snapshot of the step. fgd_fragmented_gpus is the
-- free GPU capacity the recent jobs' typical shapes are expected not to be able to use (FGD, Weng
-- et al., ATC'23) and fgd_rate its share of the free capacity (fgd_fragmentation_gpus and
-- fgd_fragmentation_rate); fgd_max is the worst snapshot; NaN before any job said its shape.
SELECT toStartOfInterval(ts, toIntervalSecond({step_s:UInt32})) AS t,
       round(avgIf(value, kpi = 'free_gpus'), 2) AS free_gpus,
       round(avgIf(value, kpi = 'stranded_gpus'), 2) AS stranded_gpus,
       round(avgIf(value, kpi = 'stranded_share'), 4) AS stranded_share,
       round(avgIf(value, kpi = 'fragmented_nodes'), 2) AS fragmented_nodes,
       maxIf(value, kpi = 'stranded_gpus') AS stranded_max,
       round(avgIf(value, kpi = 'fgd_fragmentation_gpus'), 2) AS fgd_fragmented_gpus,
       round(avgIf(value, kpi = 'fgd_fragmentation_rate'), 4) AS fgd_rate,
       maxIf(value, kpi = 'fgd_fragmentation_gpus') AS fgd_max,
       countIf(kpi = 'free_gpus') AS snapshots
FROM scheduling_kpis FINAL
WHERE kpi IN ('free_gpus', 'stranded_gpus', 'stranded_share', 'fragmented_nodes', 'fgd_fragmentation_gpus', 'fgd_fragmentation_rate')
  AND dimension = 'cluster'
  AND ts >= now64(3) - toIntervalSecond({since_s:UInt32})
GROUP BY t
ORDER BY t
