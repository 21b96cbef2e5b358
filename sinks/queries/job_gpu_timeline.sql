-- name: job_gpu_timeline
-- group: diagnostics
-- what: per GPU of a job and time bucket: mean utilisation, power and SM clock and the samples behind them (the data of a utilisation heat strip)
-- param: job String              the job id
-- param: bucket_s UInt32 = 0     time bucket, seconds (0: about 60 over a job of up to an hour, about 120 whole minutes beyond)
-- param: since_s UInt32 = 0      only the last since_s seconds of the job (0: all of it)
WITH
    -- the job's span to the minute, from the per-job rollup (ORDER BY job_id, ts): the big tables
    -- are read only over it
    (SELECT (min(ts), max(ts) + toIntervalMinute(1)) FROM job_rollup_1m WHERE job_id = {job:String}) AS span,
    span.2 AS t1,
    if({since_s:UInt32} > 0, greatest(span.1, t1 - toIntervalSecond({since_s:UInt32})), span.1) AS t0,
    -- buckets as asked, or about 60 of at least 10 s up to an hour, about 120 whole minutes beyond;
    -- whole minutes are read from gpu_rollup_1m, other buckets from gpu_samples
    dateDiff('second', t0, t1) AS span_s,
    toUInt32(if({bucket_s:UInt32} > 0, {bucket_s:UInt32},
                if(span_s <= 3600, greatest(10, 10 * ceil(span_s / 600)), 60 * ceil(span_s / 7200)))) AS b
SELECT bucket, node, gpu_index AS gpu, gpu_uuid, samples, round(u, 2) AS util, round(p, 1) AS power_w, round(c, 0) AS sm_clock_mhz
FROM (
    SELECT node, gpu_index, any(gpu_uuid) AS gpu_uuid, toStartOfInterval(ts, toIntervalSecond(b)) AS bucket,
           avg(gpu_util) AS u, avg(power_w) AS p, avg(sm_clock_mhz) AS c, count() AS samples
    FROM gpu_samples
    WHERE b % 60 != 0 AND job_id = {job:String} AND ts >= t0 AND ts < t1
    GROUP BY node, gpu_index, bucket
    UNION ALL
    SELECT node, gpu_index, anyLast(gpu_uuid), toStartOfInterval(ts, toIntervalSecond(b)) AS bucket,
           avgMerge(gpu_util_avg), avgMerge(power_w_avg), avgMerge(sm_clock_mhz_avg), sum(samples)
    FROM gpu_rollup_1m
    WHERE b % 60 = 0 AND job_id = {job:String} AND ts >= t0 AND ts < t1
    GROUP BY node, gpu_index, bucket
)
ORDER BY node, gpu, bucket
