-- name: underused_jobs
-- group: monitoring
-- what: jobs whose p95 GPU utilisation since they started is below a threshold: who runs them, how many GPUs, for how long, and the GPU-hours they hold
-- param: threshold_pct Float64 = 30   p95 utilisation below this is under-use (the job_underused detector's default)
-- param: since_s UInt32 = 86400       jobs seen in the last since_s seconds
--
-- From the stream's since-start view of each job (job_quantiles, merged from its GPUs' KLL
-- sketches), the latest in the window; gpu_hours = GPUs x time since the job's first sample.
SELECT job_id AS job, argMax(user, window_end) AS user, argMax(team, window_end) AS team, argMax(gpus, window_end) AS gpus,
       round(argMax(p50, window_end), 1) AS util_p50, round(argMax(p95, window_end), 1) AS util_p95,
       round(argMax(mean, window_end), 1) AS util_mean,
       round(dateDiff('millisecond', min(window_start), max(window_end)) / 1000) AS running_s,
       round(gpus * running_s / 3600, 2) AS gpu_hours, max(window_end) AS as_of
FROM job_quantiles FINAL
WHERE metric = 'gpu_util' AND window = 'since_start' AND window_end >= now64(3) - toIntervalSecond({since_s:UInt32})
GROUP BY job_id
HAVING util_p95 < {threshold_pct:Float64}
ORDER BY gpu_hours DESC, job
