-- name: counts
-- group: store
-- what: rows per table
SELECT table, rows FROM (
    SELECT 1 AS i, 'gpu_samples' AS table, count() AS rows FROM gpu_samples FINAL
    UNION ALL SELECT 2, 'gpu_quantiles', count() FROM gpu_quantiles FINAL
    UNION ALL SELECT 3, 'anomalies', count() FROM anomalies FINAL
    UNION ALL SELECT 4, 'dead_letters', count() FROM dead_letters FINAL
    UNION ALL SELECT 5, 'ib_samples', count() FROM ib_samples FINAL
    UNION ALL SELECT 6, 'agent_health', count() FROM agent_health FINAL
    UNION ALL SELECT 7, 'job_quantiles', count() FROM job_quantiles FINAL
) ORDER BY i
