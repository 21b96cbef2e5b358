-- name: gpu_quantiles
-- group: store
-- what: per GPU: its job, p25/p50/p95 of utilisation since the job started (stream sketches), the p95 of its latest shortest window, and its flags
-- param: since_s UInt32 = 86400   GPUs with a since-start view in the last since_s seconds
SELECT s.node AS node, s.gpu_index AS gpu, s.job AS job, s.samples AS samples,
       round(s.p25, 1) AS p25, round(s.p50, 1) AS p50, round(s.p95, 1) AS p95,
       round(w.last_p95, 1) AS last_window_p95, a.flags AS anomalies
FROM (
    SELECT node, gpu_index, gpu_uuid, argMax(job_id, window_end) AS job, argMax(count, window_end) AS samples,
           argMax(p25, window_end) AS p25, argMax(p50, window_end) AS p50, argMax(p95, window_end) AS p95
    FROM gpu_quantiles FINAL
    WHERE metric = 'gpu_util' AND window = 'since_start'
      AND window_end >= now64(3) - toIntervalSecond({since_s:UInt32})
    GROUP BY node, gpu_index, gpu_uuid
) AS s
LEFT JOIN (
    SELECT gpu_uuid, argMax(p95, (window_end, window_start)) AS last_p95
    FROM gpu_quantiles FINAL WHERE metric = 'gpu_util' AND window != 'since_start' GROUP BY gpu_uuid
) AS w ON w.gpu_uuid = s.gpu_uuid
LEFT JOIN (
    SELECT gpu_uuid, arrayStringConcat(arraySort(groupArray(
               concat(kind, if(incidents > 1, concat(' x', toString(incidents)), ''),
                      if(open > 0, ' (firing)', ' (resolved)')))), ', ') AS flags
    FROM (
        SELECT gpu_uuid, kind, count() AS incidents, countIf(state = 'firing') AS open
        FROM (
            SELECT assumeNotNull(gpu_uuid) AS gpu_uuid, kind, id,
                   if(countIf(state = 'resolved') > 0, 'resolved', 'firing') AS state
            FROM anomalies FINAL
            WHERE gpu_uuid IS NOT NULL AND ts >= now64(3) - toIntervalSecond({since_s:UInt32})
            GROUP BY gpu_uuid, kind, id
        )
        GROUP BY gpu_uuid, kind
    )
    GROUP BY gpu_uuid
) AS a ON a.gpu_uuid = s.gpu_uuid
ORDER BY node, gpu
