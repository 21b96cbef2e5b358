-- name: job_gpu_buckets
-- group: view
-- what: per GPU of a job and time bucket in [t0, t1): mean utilisation (u), power (p) and SM clock (c) and the samples behind them
-- param: job String                  the job id
-- param: t0 DateTime64(3, 'UTC')     the window's start (job_window's t0)
-- param: t1 DateTime64(3, 'UTC')     its end, excluded (job_window's t1)
-- param: b UInt32                    the bucket, seconds (job_window's b)
--
-- A parameterized view (`hpcinsight db migrate` creates it), read by the job-scoped queries as
-- job_gpu_buckets(job = {job:String}, t0 = t0, t1 = t1, b = b) after job_window. Whole-minute
-- buckets come from gpu_rollup_1m (average states, so a bucket's mean is exact), other buckets
-- from gpu_samples (through its job_id skip index); columns node, gpu_index, gpu_uuid, bucket, u,
-- p, c, samples.
SELECT node, gpu_index, any(gpu_uuid) AS gpu_uuid, toStartOfInterval(ts, toIntervalSecond({b:UInt32})) AS bucket,
       avg(gpu_util) AS u, avg(power_w) AS p, avg(sm_clock_mhz) AS c, count() AS samples
FROM gpu_samples
WHERE {b:UInt32} % 60 != 0 AND job_id = {job:String} AND ts >= {t0:DateTime64(3, 'UTC')} AND ts < {t1:DateTime64(3, 'UTC')}
GROUP BY node, gpu_index, bucket
UNION ALL
SELECT node, gpu_index, anyLast(gpu_uuid), toStartOfInterval(ts, toIntervalSecond({b:UInt32})) AS bucket,
       avgMerge(gpu_util_avg), avgMerge(power_w_avg), avgMerge(sm_clock_mhz_avg), sum(samples)
FROM gpu_rollup_1m
WHERE {b:UInt32} % 60 = 0 AND job_id = {job:String} AND ts >= {t0:DateTime64(3, 'UTC')} AND ts < {t1:DateTime64(3, 'UTC')}
GROUP BY node, gpu_index, bucket
