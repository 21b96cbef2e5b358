-- name: job_ib_timeline
-- group: diagnostics
-- what: per node of a job and time bucket: InfiniBand throughput (transmit + receive over its ports), transmit waits, port errors and link downs
-- param: job String              the job id
-- param: bucket_s UInt32 = 0     time bucket, seconds (0: about 60 over a job of up to an hour, about 120 whole minutes beyond)
-- param: since_s UInt32 = 0      only the last since_s seconds of the job (0: all of it)
--
-- gb_per_s: mean over the bucket of the node's summed port throughput, in GB/s (10^9 bytes);
-- errors: symbol, link-recovery, receive, remote-physical and integrity errors summed.
WITH
    -- the job's window [t0, t1) and bucket b (seconds), from the view job_window
    -- (sinks/queries/views/job_window.sql): the big tables are read only over the job's span
    (SELECT (t0, t1, b) FROM job_window(job = {job:String}, since_s = {since_s:UInt32}, bucket_s = {bucket_s:UInt32})) AS w,
    w.1 AS t0, w.2 AS t1, w.3 AS b

SELECT bucket, node, uniqExact(port_id) AS ports, round(sum(bytes) / uniqExact(ts) / 1e9, 3) AS gb_per_s,
       round(sum(waits) / uniqExact(ts), 1) AS xmit_wait_per_s, sum(errors) AS errors, sum(downs) AS link_downs
FROM (
    SELECT toStartOfInterval(ts, toIntervalSecond(b)) AS bucket, node, ts, (device, port) AS port_id,
           ifNull(xmit_bytes_per_s, 0) + ifNull(rcv_bytes_per_s, 0) AS bytes, ifNull(xmit_wait_per_s, 0) AS waits,
           ifNull(symbol_errors, 0) + ifNull(link_error_recovery, 0) + ifNull(rcv_errors, 0)
             + ifNull(rcv_remote_physical_errors, 0) + ifNull(local_link_integrity_errors, 0) AS errors,
           ifNull(link_downed, 0) AS downs
    FROM ib_samples
    WHERE job_id = {job:String} AND ts >= t0 AND ts < t1
)
GROUP BY bucket, node
ORDER BY node, bucket
