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
    -- the job's window [t0, t1) and bucket b (seconds), from the view job_window
    -- (sinks/queries/views/job_window.sql): the big tables are read only over the job's span
    (SELECT (t0, t1, b) FROM job_window(job = {job:String}, since_s = {since_s:UInt32}, bucket_s = {bucket_s:UInt32})) AS w,
    w.1 AS t0, w.2 AS t1, w.3 AS b

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
