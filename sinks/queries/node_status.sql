-- name: node_status
-- group: monitoring
-- what: per node: zone, GPUs inventoried and reporting, jobs, mean utilisation, hottest GPU, throttled GPUs, ECC and XID errors, IB ports down, open anomalies, and a status (ok, attention, silent)
-- param: within_s UInt32 = 300   judge the last within_s seconds
--
-- Nodes are those of the inventory and those that sent GPU samples in the window. silent: no GPU
-- sample in the window; attention: a GPU with uncorrectable ECC errors (volatile count) or failed row remapping, an XID, an IB port not ACTIVE, or an
-- open critical or warning anomaly on the node or one of its GPUs.
WITH now64(3) - toIntervalSecond({within_s:UInt32}) AS since
SELECT
    n.node AS node, inv.zone AS zone, inv.gpu_model AS gpu_model, inv.gpus AS gpus, ifNull(g.reporting, 0) AS reporting,
    g.last_seen AS last_seen, g.jobs AS jobs, round(g.util, 1) AS util_mean, round(toFloat64(g.temp_max), 1) AS temperature_max_c,
    ifNull(g.throttled, 0) AS throttled_gpus, ifNull(g.ecc, 0) AS ecc_gpus, ifNull(x.xids, 0) AS xids,
    ifNull(ib.ports, 0) AS ib_ports, ifNull(ib.down, 0) AS ib_ports_down, ifNull(a.open, 0) AS open_anomalies,
    a.kinds AS anomaly_kinds,
    multiIf(ifNull(g.reporting, 0) = 0, 'silent',
            ifNull(g.ecc, 0) > 0 OR ifNull(x.xids, 0) > 0 OR ifNull(ib.down, 0) > 0 OR ifNull(a.serious, 0) > 0, 'attention',
            'ok') AS status
FROM (
    SELECT DISTINCT node FROM (
        SELECT node FROM node_inventory
        UNION ALL SELECT node FROM gpu_samples WHERE ts >= since
    )
) AS n
LEFT JOIN (
    SELECT node, argMax(zone, ts) AS zone, argMax(gpu_model, ts) AS gpu_model, argMax(gpu_count, ts) AS gpus
    FROM node_inventory FINAL GROUP BY node
) AS inv ON inv.node = n.node
LEFT JOIN (
    SELECT node, toNullable(uniqExact(gpu_index)) AS reporting, max(ts) AS last_seen,
           arrayStringConcat(arraySort(groupUniqArrayIf(assumeNotNull(job_id), job_id IS NOT NULL)), ', ') AS jobs,
           avg(gpu_util) AS util, max(temperature_c) AS temp_max,
           uniqExactIf(gpu_index, hasAny(throttle, ['hw_slowdown', 'hw_thermal', 'sw_thermal', 'hw_power_brake', 'sw_power_cap'])) AS throttled,
           uniqExactIf(gpu_index, ecc_uncorrected_volatile > 0 OR remapped_rows_failure) AS ecc
    FROM gpu_samples WHERE ts >= since GROUP BY node
) AS g ON g.node = n.node
LEFT JOIN (
    SELECT node, count() AS xids FROM xid_events FINAL WHERE ts >= since GROUP BY node
) AS x ON x.node = n.node
LEFT JOIN (
    SELECT node, count() AS ports, countIf(state != 'ACTIVE') AS down
    FROM (SELECT node, device, port, argMax(ifNull(state, ''), ts) AS state FROM ib_samples WHERE ts >= since GROUP BY node, device, port)
    GROUP BY node
) AS ib ON ib.node = n.node
LEFT JOIN (
    SELECT node, count() AS open, countIf(severity IN ('critical', 'warning')) AS serious,
           arrayStringConcat(arraySort(groupUniqArray(kind)), ', ') AS kinds
    FROM (
        SELECT id, assumeNotNull(any(node)) AS open_on, any(kind) AS kind, any(severity) AS severity
        FROM anomalies FINAL
        WHERE node IS NOT NULL
        GROUP BY id
        HAVING countIf(state = 'resolved') = 0
    )
    GROUP BY open_on AS node
) AS a ON a.node = n.node
ORDER BY status = 'ok', status, node
