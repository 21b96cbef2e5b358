-- name: user_gpu_hours
-- group: monitoring
-- what: per user: team, GPU-hours held, share of the cluster's, the utilisation of what they held, and their jobs
-- param: since_s UInt32 = 86400   the last since_s seconds
--
-- From the scheduling KPIs (scheduling_kpis, dimension user), as team_usage; the team is the
-- latest the scheduler reported for the user.
WITH now64(3) - toIntervalSecond({since_s:UInt32}) AS since,
     (SELECT sum(value) FROM scheduling_kpis FINAL
      WHERE kpi = 'gpu_hours' AND dimension = 'cluster' AND ts > since) AS cluster_hours
SELECT k.user AS user, j.team AS team, round(k.gpu_hours, 3) AS gpu_hours, round(100 * k.gpu_hours / cluster_hours, 1) AS share_pct,
       round(k.util, 1) AS util_mean_pct, ifNull(j.jobs, 0) AS jobs
FROM (
    SELECT `group` AS user, sumIf(value, kpi = 'gpu_hours') AS gpu_hours,
           if(countIf(kpi = 'gpu_util_mean_pct') > 0, avgIf(value, kpi = 'gpu_util_mean_pct'), NULL) AS util
    FROM scheduling_kpis FINAL
    WHERE dimension = 'user' AND kpi IN ('gpu_hours', 'gpu_util_mean_pct') AND ts > since
    GROUP BY user
) AS k
LEFT JOIN (
    SELECT assumeNotNull(user) AS user, argMax(team, ts) AS team, uniqExactIf(job_id, kind IN ('scheduled', 'started')) AS jobs
    FROM scheduler_events FINAL WHERE ts > since AND user IS NOT NULL GROUP BY user
) AS j ON j.user = k.user
ORDER BY gpu_hours DESC, user
