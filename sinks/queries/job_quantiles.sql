-- name: job_quantiles
-- group: store
-- what: per job: user, team, GPUs, and p25/p50/p95 of GPU utilisation since the job started (merged GPU sketches)
-- param: since_s UInt32 = 86400   jobs with a since-start view in the last since_s seconds
SELECT job_id AS job, argMax(user, window_end) AS user, argMax(team, window_end) AS team,
       argMax(gpus, window_end) AS gpus, argMax(count, window_end) AS samples,
       round(argMax(p25, window_end), 1) AS p25, round(argMax(p50, window_end), 1) AS p50,
       round(argMax(p95, window_end), 1) AS p95, max(window_end) AS as_of
FROM job_quantiles FINAL
WHERE metric = 'gpu_util' AND window = 'since_start'
  AND window_end >= now64(3) - toIntervalSecond({since_s:UInt32})
GROUP BY job_id
ORDER BY job_id
