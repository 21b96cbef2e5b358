-- name: cluster_now
-- group: monitoring
-- what: the latest state of every GPU that reported recently: its job, user and team, utilisation, memory, power, temperature, SM clock, throttling, ECC, and its open anomalies
-- param: within_s UInt32 = 300   GPUs that reported in the last within_s seconds
--
-- gpu_samples is read over the last within_s seconds only (the day partition and the ts column
-- of the sorting key (node, gpu_index, ts) prune the rest). An anomaly is open while its incident
-- has fired and not resolved.
SELECT node, gpu_index AS gpu, s.1 AS gpu_uuid, last_seen, s.2 AS job, s.3 AS user, s.4 AS team,
       round(toFloat64(s.5), 1) AS util, round(s.6 / 1073741824, 1) AS mem_used_gib, round(toFloat64(s.7), 1) AS power_w,
       round(toFloat64(s.8), 1) AS temperature_c, round(toFloat64(s.9)) AS sm_clock_mhz,
       arrayStringConcat(s.10, ',') AS throttle, s.11 AS ecc_uncorrected, a.open_anomalies AS open_anomalies
FROM (
    SELECT node, gpu_index, max(ts) AS last_seen,
           argMax((gpu_uuid, job_id, user, team, gpu_util, mem_used_bytes, power_w, temperature_c, sm_clock_mhz, throttle,
                   ecc_uncorrected_volatile), ts) AS s
    FROM gpu_samples
    WHERE ts >= now64(3) - toIntervalSecond({within_s:UInt32})
    GROUP BY node, gpu_index
) AS g
LEFT JOIN (
    SELECT gpu_uuid, arrayStringConcat(arraySort(groupArray(kind)), ', ') AS open_anomalies
    FROM (
        SELECT id, assumeNotNull(any(gpu_uuid)) AS open_on, any(kind) AS kind
        FROM anomalies FINAL
        WHERE gpu_uuid IS NOT NULL
        GROUP BY id
        HAVING countIf(state = 'resolved') = 0
    )
    GROUP BY open_on AS gpu_uuid
) AS a ON a.gpu_uuid = g.s.1
ORDER BY node, gpu
