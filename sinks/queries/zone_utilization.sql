-- name: zone_utilization
-- group: scheduling
-- what: per zone: GPUs, the share allocated to jobs (scheduler) and how busy its GPUs were (telemetry): mean utilisation and the share of GPU-hours below 10 %
-- param: since_s UInt32 = 86400   the last since_s seconds (telemetry: from the start of that hour)
--
-- Allocation from the worker's snapshots (scheduling_kpis, dimension zone, averaged);
-- utilisation from the hourly per-GPU rollup (gpu_rollup_1h), each node in the zone the node
-- inventory gives it: util_mean_pct is the mean over every sample, idle_gpu_hour_share the share
-- of GPU-hours whose mean was below 10 %.
WITH now64(3) - toIntervalSecond({since_s:UInt32}) AS since
SELECT if(empty(k.zone), u.zone, k.zone) AS zone, round(k.total, 1) AS total_gpus, round(k.allocated, 2) AS allocated_gpus,
       round(k.rate, 4) AS allocation_rate, round(u.util, 1) AS util_mean_pct, round(u.idle, 4) AS idle_gpu_hour_share,
       u.gpus AS gpus_reporting
FROM (
    SELECT `group` AS zone, avgIf(value, kpi = 'total_gpus') AS total, avgIf(value, kpi = 'allocated_gpus') AS allocated,
           avgIf(value, kpi = 'allocation_rate') AS rate
    FROM scheduling_kpis FINAL
    WHERE dimension = 'zone' AND kpi IN ('total_gpus', 'allocated_gpus', 'allocation_rate') AND ts >= since
    GROUP BY zone
) AS k
FULL JOIN (
    SELECT node_zone AS zone, sum(hour_util * n) / sum(n) AS util, avg(hour_util < 10) AS idle, uniqExact(node, gpu_index) AS gpus
    FROM (
        SELECT node, gpu_index, ts, avgMerge(gpu_util_avg) AS hour_util, sum(samples) AS n
        FROM gpu_rollup_1h
        WHERE ts >= toStartOfHour(since)
        GROUP BY node, gpu_index, ts
    ) AS r
    INNER JOIN (SELECT node, argMax(zone, ts) AS node_zone FROM node_inventory FINAL WHERE zone IS NOT NULL GROUP BY node) AS z
        ON z.node = r.node
    WHERE NOT isNaN(hour_util)
    GROUP BY node_zone
) AS u ON u.zone = k.zone
ORDER BY zone
