-- name: wait_time_by_resource_type
-- group: scheduling
-- what: how long jobs wait in the queue by what they ask for (GPU count bucket, GPU model; the cluster and multi-node gang jobs for reference): jobs, p50 and p95 wait
-- param: since_s UInt32 = 86400   jobs scheduled in the last since_s seconds
--
-- The worker computes exact p50/p95 waits of the jobs scheduled in each KPI interval
-- (scheduling_kpis: queue_wait_p50_s, queue_wait_p95_s, gang_wait_*). Quantiles of intervals do
-- not merge exactly, so this gives their job-weighted mean (exact where one interval holds all the
-- jobs) and the worst interval's p95.
SELECT resource, `group`, sum(n) AS jobs,
       round(sum(p50 * n) / jobs, 1) AS wait_p50_s, round(sum(p95 * n) / jobs, 1) AS wait_p95_s,
       round(max(p95), 1) AS worst_interval_p95_s, count() AS intervals
FROM (
    SELECT ts, if(kpi LIKE 'gang_wait%', 'multi_node', dimension) AS resource, `group`,
           anyIf(value, kpi LIKE '%_p50_s') AS p50, anyIf(value, kpi LIKE '%_p95_s') AS p95, max(count) AS n
    FROM scheduling_kpis FINAL
    WHERE kpi IN ('queue_wait_p50_s', 'queue_wait_p95_s', 'gang_wait_p50_s', 'gang_wait_p95_s')
      AND (dimension IN ('gpu_bucket', 'gpu_model') OR (dimension = 'cluster'))
      AND ts >= now64(3) - toIntervalSecond({since_s:UInt32})
    GROUP BY ts, resource, `group`
)
WHERE n > 0
GROUP BY resource, `group`
ORDER BY indexOf(['cluster', 'multi_node', 'gpu_bucket', 'gpu_model'], resource),
         indexOf(['cpu', 'frac', '1', '2-4', '5-8', '>8'], `group`), `group`
