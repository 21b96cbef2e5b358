-- name: team_usage
-- group: monitoring
-- what: per team: GPU-hours held, share of the cluster's, the utilisation of what it held, the GPU-hours that utilisation leaves idle, and its jobs
-- param: since_s UInt32 = 86400   the last since_s seconds
--
-- From the scheduling KPIs the stream worker computes (scheduling_kpis): gpu_hours per interval
-- summed; util_mean_pct the mean over the window of the team's gpu_util_mean_pct snapshots
-- (GPU-weighted since-start utilisation of its jobs); idle_gpu_hours = gpu_hours x (1 - util).
-- jobs: jobs of the team scheduled in the window (scheduler_events).
WITH now64(3) - toIntervalSecond({since_s:UInt32}) AS since,
     (SELECT sum(value) FROM scheduling_kpis FINAL
      WHERE kpi = 'gpu_hours' AND dimension = 'cluster' AND ts > since) AS cluster_hours
SELECT k.team AS team, round(k.gpu_hours, 3) AS gpu_hours, round(100 * k.gpu_hours / cluster_hours, 1) AS share_pct,
       round(k.util, 1) AS util_mean_pct, round(k.gpu_hours * (1 - k.util / 100), 3) AS idle_gpu_hours, ifNull(j.jobs, 0) AS jobs
FROM (
    SELECT `group` AS team, sumIf(value, kpi = 'gpu_hours') AS gpu_hours,
           if(countIf(kpi = 'gpu_util_mean_pct') > 0, avgIf(value, kpi = 'gpu_util_mean_pct'), NULL) AS util
    FROM scheduling_kpis FINAL
    WHERE dimension = 'team' AND kpi IN ('gpu_hours', 'gpu_util_mean_pct') AND ts > since
    GROUP BY team
) AS k
LEFT JOIN (
    SELECT assumeNotNull(team) AS team, uniqExact(job_id) AS jobs FROM scheduler_events FINAL
    WHERE kind IN ('scheduled', 'started') AND ts > since AND team IS NOT NULL GROUP BY team
) AS j ON j.team = k.team
ORDER BY gpu_hours DESC, team
