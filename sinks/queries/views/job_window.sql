-- name: job_window
-- group: view
-- what: the window and time buckets of a job-scoped query: one row (t0, t1, span_s, b)
-- param: job String        the job id
-- param: since_s UInt32    only the last since_s seconds of the job (0: all of it)
-- param: bucket_s UInt32   time bucket, seconds (0: about 60 over a job of up to an hour, about 120 whole minutes beyond)
--
-- A parameterized view (`hpcinsight db migrate` creates it): the job-scoped queries start here,
-- e.g. SELECT * FROM job_window(job = 'llm-7b', since_s = 0, bucket_s = 0). [t0, t1) is the job's
-- span to the minute, from the per-job rollup (ORDER BY job_id, ts), so the big tables are read
-- only over it; span_s is its length and b the bucket, both in seconds. Whole-minute buckets can
-- be read from the per-minute rollups (job_gpu_buckets does).
WITH
    (SELECT (min(ts), max(ts) + toIntervalMinute(1)) FROM job_rollup_1m WHERE job_id = {job:String}) AS span,
    span.2 AS t1,
    if({since_s:UInt32} > 0, greatest(span.1, t1 - toIntervalSecond({since_s:UInt32})), span.1) AS t0,
    dateDiff('second', t0, t1) AS span_s,
    toUInt32(if({bucket_s:UInt32} > 0, {bucket_s:UInt32},
                if(span_s <= 3600, greatest(10, 10 * ceil(span_s / 600)), 60 * ceil(span_s / 7200)))) AS b
SELECT t0, t1, span_s, b
