-- name: job_gpu_timeline
-- group: diagnostics
-- what: per GPU of a job and time bucket: mean utilisation, power and SM clock and the samples behind them (the data of a utilisation heat strip)
-- param: job String              the job id
-- param: bucket_s UInt32 = 0     time bucket, seconds (0: about 60 over a job of up to an hour, about 120 whole minutes beyond)
-- param: since_s UInt32 = 0      only the last since_s seconds of the job (0: all of it)
WITH
    -- the job's window [t0, t1) and bucket b (seconds), from the view job_window
    -- (sinks/queries/views/job_window.sql): the big tables are read only over the job's span
    (SELECT (t0, t1, b) FROM job_window(job = {job:String}, since_s = {since_s:UInt32}, bucket_s = {bucket_s:UInt32})) AS w,
    w.1 AS t0, w.2 AS t1, w.3 AS b
SELECT bucket, node, gpu_index AS gpu, gpu_uuid, samples, round(u, 2) AS util, round(p, 1) AS power_w, round(c, 0) AS sm_clock_mhz
FROM job_gpu_buckets(job = {job:String}, t0 = t0, t1 = t1, b = b)
ORDER BY node, gpu, bucket
