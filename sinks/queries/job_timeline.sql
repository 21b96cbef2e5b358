-- name: job_timeline
-- group: diagnostics
-- what: what happened to a job, in order: scheduler events, anomalies firing and resolving (the job's and its GPUs', nodes' and links'), and per bucket a summary of its GPUs and steps
-- param: job String              the job id
-- param: bucket_s UInt32 = 0     a summary every bucket_s seconds (0: about 12 over the job, whole minutes)
-- param: since_s UInt32 = 0      only the last since_s seconds of the job (0: all of it)
--
-- source: scheduler | anomaly | gpus | steps. An anomaly belongs to the job when it names the job,
-- or one of the job's GPUs, or (for node and link findings) one of its nodes, while the job ran.
WITH
    -- the job's window [t0, t1) from the view job_window (sinks/queries/views/job_window.sql): the
    -- big tables are read only over the job's span; a summary every b seconds, whole minutes
    (SELECT (t0, t1, span_s) FROM job_window(job = {job:String}, since_s = {since_s:UInt32}, bucket_s = 0)) AS w,
    w.1 AS t0, w.2 AS t1, w.3 AS span_s,
    toUInt32(if({bucket_s:UInt32} > 0, {bucket_s:UInt32}, 60 * greatest(1, ceil(span_s / 720)))) AS b,
    (SELECT (groupUniqArray(gpu_uuid), groupUniqArray(node)) FROM gpu_rollup_1m
     WHERE job_id = {job:String} AND ts >= t0 AND ts < t1) AS placed
SELECT ts, source, event, subject, detail
FROM (
    SELECT ts, 1 AS o, 'scheduler' AS source, toString(kind) AS event, ifNull(node, '') AS subject,
           concat(ifNull(user, '?'), ' / ', ifNull(team, '?'),
                  if(requested_gpus IS NULL, '', concat(', ', toString(requested_gpus), ' GPUs')),
                  if(status IS NULL, '', concat(', ', status))) AS detail
    FROM scheduler_events FINAL
    WHERE job_id = {job:String} AND ts >= t0 - toIntervalDay(30)
    UNION ALL
    SELECT ts, 2, 'anomaly', concat(kind, ' ', state, ' (', severity, ')'), subject, message
    FROM anomalies FINAL
    WHERE ts >= t0 AND ts <= t1 + toIntervalMinute(10)
      AND (job_id = {job:String} OR has(placed.1, ifNull(gpu_uuid, ''))
           OR (subject_type IN ('node', 'link') AND has(placed.2, ifNull(node, ''))))
    UNION ALL
    SELECT toDateTime64(bucket, 3), 3, 'gpus', 'summary', concat(toString(gpus), ' GPUs'),
           concat('mean utilisation per GPU p5 ', toString(round(q[1], 1)), ' p50 ', toString(round(q[2], 1)), ' p95 ',
                  toString(round(q[3], 1)), ' %, lowest ', lowest.2, ' ', toString(round(lowest.1, 1)), ' %, power p50 ',
                  toString(round(pw, 0)), ' W, SM clock p50 ', toString(round(clock, 0)), ' MHz')
    FROM (
        SELECT bucket, count() AS gpus, quantilesExactInclusive(0.05, 0.5, 0.95)(u) AS q,
               quantileExactInclusive(0.5)(p) AS pw, quantileExactInclusive(0.5)(c) AS clock,
               argMin((u, concat(node, '/', toString(gpu_index))), (u, node, gpu_index)) AS lowest
        FROM job_gpu_buckets(job = {job:String}, t0 = t0, t1 = t1, b = b)
        GROUP BY bucket
    )
    UNION ALL
    SELECT toDateTime64(bucket, 3), 4, 'steps', 'summary', concat(toString(ranks), ' ranks'),
           concat(toString(steps), ' steps, step time p50 ', toString(round(q[1], 3)), ' s, p95 ', toString(round(q[2], 3)),
                  ' s, slowest rank ', toString(slow.1), ' (', toString(round(slow.2, 3)), ' s median)')
    FROM (
        SELECT bucket, sum(n) AS steps, count() AS ranks, quantilesExactInclusive(0.5, 0.95)(med) AS q,
               argMax((rank, med), (med, -toInt64(rank))) AS slow
        FROM (
            SELECT toStartOfInterval(ts, toIntervalSecond(b)) AS bucket, rank, count() AS n,
                   quantileExactInclusive(0.5)(duration_s) AS med
            FROM step_metrics
            WHERE job_id = {job:String} AND ts >= t0 AND ts < t1
            GROUP BY bucket, rank
        )
        GROUP BY bucket
    )
)
-- rows of one instant and source in one order every time
ORDER BY ts, o, event, subject, detail
