-- name: step_flags
-- group: diagnostics
-- what: straggler and imbalance incidents per job: the rank (none for imbalance), the steps each spans, open or resolved, how much slower than the median rank, the step-time CoV
-- param: since_s UInt32 = 86400   incidents seen in the last since_s seconds
--
-- From the straggler detector's anomalies, whose evidence holds the window of steps it judged
-- (first_step, last_step), the rank, slower_than_median, slowest_share and mean_cov. An incident
-- spans from the first step of the window it fired on to the step before the first step of the
-- window it resolved on (the last window in which it still held); one still open runs to the job's
-- last stored step. slower_pct and slowest_share are those of the window it fired on.
SELECT f.job AS job, f.flag AS flag, f.rank AS rank, f.first_step AS first_step,
       if(f.resolved, greatest(f.resolved_from, 1) - 1, greatest(s.last_step, f.fired_to)) AS last_step,
       if(f.resolved, 'resolved', 'open') AS state, f.slower_pct AS slower_pct, f.slowest_share AS slowest_share,
       f.mean_cov AS mean_cov, f.since AS since, f.message AS message
FROM (
    SELECT assumeNotNull(any(job_id)) AS job,
           if(any(subject_type) = 'rank', 'straggler', 'imbalance') AS flag,
           if(flag = 'straggler', toNullable(toUInt32(anyIf(evidence['rank'], state = 'firing'))), NULL) AS rank,
           toUInt64(anyIf(evidence['first_step'], state = 'firing')) AS first_step,
           toUInt64(anyIf(evidence['last_step'], state = 'firing')) AS fired_to,
           countIf(state = 'resolved') > 0 AS resolved,
           toUInt64(anyIf(evidence['first_step'], state = 'resolved')) AS resolved_from,
           if(flag = 'straggler', round(100 * anyIf(evidence['slower_than_median'], state = 'firing'), 1), NULL) AS slower_pct,
           if(flag = 'straggler', round(anyIf(evidence['slowest_share'], state = 'firing'), 2), NULL) AS slowest_share,
           round(anyIf(evidence['mean_cov'], state = 'firing'), 3) AS mean_cov,
           toDateTime(min(started_at)) AS since,
           anyIf(message, state = 'firing') AS message
    FROM anomalies FINAL
    WHERE kind = 'straggler' AND job_id IS NOT NULL AND ts >= now64(3) - toIntervalSecond({since_s:UInt32})
    GROUP BY id
) AS f
LEFT JOIN (
    SELECT job_id, max(step) AS last_step FROM step_metrics
    WHERE job_id IN (SELECT assumeNotNull(job_id) FROM anomalies WHERE kind = 'straggler' AND job_id IS NOT NULL)
    GROUP BY job_id
) AS s ON s.job_id = f.job
ORDER BY job, first_step, flag, rank
