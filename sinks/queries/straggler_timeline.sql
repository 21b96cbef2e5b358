-- name: straggler_timeline
-- group: diagnostics
-- what: per rank and time bucket: steps, median step time, how much slower than the median rank of the same steps, and how often it was the slowest
-- param: job String              the job id
-- param: bucket_s UInt32 = 0     time bucket, seconds (0: about 60 over a job of up to an hour, about 120 whole minutes beyond)
-- param: since_s UInt32 = 0      only the last since_s seconds of the job (0: all of it)
--
-- vs_median: the rank's median of (its step time / the median step time of all ranks at that
-- step): 1.3 is 30 % slower than the typical rank. slowest_share: the share of its steps in which
-- it was the slowest rank. Steps fewer than two ranks reported are left out. step_metrics is
-- ORDER BY (job_id, rank, step): the job's rows are read by key.
WITH
    -- the job's span to the minute, from the per-job rollup (ORDER BY job_id, ts): the big tables
    -- are read only over it
    (SELECT (min(ts), max(ts) + toIntervalMinute(1)) FROM job_rollup_1m WHERE job_id = {job:String}) AS span,
    span.2 AS t1,
    if({since_s:UInt32} > 0, greatest(span.1, t1 - toIntervalSecond({since_s:UInt32})), span.1) AS t0,
    -- buckets as asked, or about 60 of at least 10 s up to an hour, about 120 whole minutes beyond
    dateDiff('second', t0, t1) AS span_s,
    toUInt32(if({bucket_s:UInt32} > 0, {bucket_s:UInt32},
                if(span_s <= 3600, greatest(10, 10 * ceil(span_s / 600)), 60 * ceil(span_s / 7200)))) AS b

SELECT
    toStartOfInterval(r.3, toIntervalSecond(b)) AS bucket,
    r.1 AS rank,
    any(r.2) AS node,
    any(r.5) AS local_rank,
    count() AS steps,
    round(quantileExactInclusive(0.5)(r.4), 4) AS step_s,
    round(quantileExactInclusive(0.5)(r.4 / step_median), 3) AS vs_median,
    round(avg(r.1 = slowest), 3) AS slowest_share
FROM (
    SELECT step, groupArray((rank, node, ts, duration_s, local_rank)) AS ranks, quantileExactInclusive(0.5)(duration_s) AS step_median,
           argMax(rank, duration_s) AS slowest
    FROM step_metrics
    WHERE job_id = {job:String} AND ts >= t0 AND ts < t1
    GROUP BY step
    HAVING count() >= 2
)
ARRAY JOIN ranks AS r
GROUP BY bucket, rank
ORDER BY bucket, rank
