-- name: job_summary
-- group: monitoring
-- what: one job at a glance: user, team, state, queue wait, duration, GPUs and nodes, p25/p50/p95 of utilisation, power and SM clock since it started, anomalies
-- param: job String   the job id
--
-- Reads tables keyed by job (scheduler_events, job_quantiles: the stream's since-start view,
-- merged from the GPUs' KLL sketches; job_rollup_1m for the span), the job's minutes of
-- gpu_rollup_1m (its GPUs and nodes) and anomalies. XID incidents carry no job: they count when
-- they are on one of the job's GPUs while it ran. duration_s runs to the job's end, or to its
-- latest data while it runs.
WITH
    (SELECT (argMax(user, ts), argMax(team, ts), argMax(priority, ts), argMax(requested_gpus, ts),
             minOrNullIf(ts, kind = 'submitted'), minOrNullIf(ts, kind IN ('scheduled', 'started')),
             maxOrNullIf(ts, kind IN ('scheduled', 'started')), maxOrNullIf(ts, kind IN ('finished', 'deleted', 'preempted')),
             argMaxIf(kind, ts, kind IN ('finished', 'deleted', 'preempted')), count())
     FROM scheduler_events FINAL WHERE job_id = {job:String}) AS sched,
    (SELECT (argMax(gpus, window_end), argMax(count, window_end), min(window_start), max(window_end),
             argMax(p25, window_end), argMax(p50, window_end), argMax(p95, window_end), argMax(mean, window_end),
             argMax(user, window_end), argMax(team, window_end), count())
     FROM job_quantiles FINAL WHERE job_id = {job:String} AND window = 'since_start' AND metric = 'gpu_util') AS util,
    (SELECT if(count() > 0, argMax(p50, window_end), NULL) FROM job_quantiles FINAL
     WHERE job_id = {job:String} AND window = 'since_start' AND metric = 'power_w') AS power,
    (SELECT if(count() > 0, argMax(p50, window_end), NULL) FROM job_quantiles FINAL
     WHERE job_id = {job:String} AND window = 'since_start' AND metric = 'sm_clock_mhz') AS clock,
    (SELECT (t0, t1) FROM job_window(job = {job:String}, since_s = 0, bucket_s = 0)) AS span,
    (SELECT (uniqExact(node), uniqExact(node, gpu_index), groupUniqArray(gpu_uuid), min(ts), max(ts) + toIntervalMinute(1))
     FROM gpu_rollup_1m WHERE job_id = {job:String} AND ts >= span.1 AND ts < span.2) AS placed,
    if(sched.10 > 0, sched.6, if(util.11 > 0, util.3, placed.4)) AS began,
    if(sched.8 > sched.7, sched.8, NULL) AS ended_at,
    (SELECT (uniqExact(id), uniqExactIf(id, open), arrayStringConcat(arraySort(groupUniqArray(kind)), ', '),
             uniqExactIf(id, severity = 'critical'))
     FROM (
        SELECT id, any(kind) AS kind, any(severity) AS severity, countIf(state = 'resolved') = 0 AS open
        FROM anomalies FINAL
        WHERE (job_id = {job:String} OR has(placed.3, ifNull(gpu_uuid, '')))
          AND ts >= began - toIntervalMinute(5) AND ts <= ifNull(ended_at, now64(3)) + toIntervalMinute(60)
        GROUP BY id)) AS flagged
SELECT
    {job:String} AS job,
    coalesce(sched.1, util.9) AS user,
    coalesce(sched.2, util.10) AS team,
    sched.3 AS priority,
    multiIf(sched.10 = 0 AND util.11 = 0 AND placed.2 = 0, 'unknown', ended_at IS NOT NULL, sched.9,
            sched.6 IS NULL AND sched.5 IS NOT NULL AND util.11 = 0, 'queued', 'running') AS state,
    sched.5 AS submitted,
    began AS started,
    ended_at AS ended,
    round(dateDiff('millisecond', sched.5, sched.6) / 1000, 1) AS queue_wait_s,
    round(dateDiff('millisecond', began, ifNull(ended_at, greatest(util.4, placed.5))) / 1000, 1) AS duration_s,
    sched.4 AS requested_gpus,
    greatest(util.1, placed.2) AS gpus,
    placed.1 AS nodes,
    if(util.11 > 0, round(util.5, 1), NULL) AS util_p25,
    if(util.11 > 0, round(util.6, 1), NULL) AS util_p50,
    if(util.11 > 0, round(util.7, 1), NULL) AS util_p95,
    if(util.11 > 0, round(util.8, 1), NULL) AS util_mean,
    round(power, 1) AS power_p50_w,
    round(clock, 0) AS sm_clock_p50_mhz,
    util.2 AS samples,
    if(util.11 > 0, util.4, NULL) AS quantiles_as_of,
    flagged.1 AS anomalies,
    flagged.2 AS open_anomalies,
    flagged.4 AS critical_anomalies,
    flagged.3 AS anomaly_kinds
