-- name: metric_correlation
-- group: diagnostics
-- what: which metrics move together in a job: Pearson correlation of utilisation, power, SM clock, IB throughput and step time across the job's GPUs and time, strongest first
-- param: job String              the job id
-- param: bucket_s UInt32 = 0     time bucket, seconds (0: about 60 over a job of up to an hour, about 120 whole minutes beyond)
-- param: since_s UInt32 = 0      only the last since_s seconds of the job (0: all of it)
--
-- One observation per GPU and bucket: the GPU's mean utilisation, power and SM clock; its node's
-- IB throughput (transmit + receive summed over the node's ports, bytes/s, mean over the bucket);
-- the median step time of the job's ranks on its node. Each pair is computed over the
-- observations that have both (n); r is NaN (shown empty) where one of them does not vary.
WITH
    -- the job's window [t0, t1) and bucket b (seconds), from the view job_window
    -- (sinks/queries/views/job_window.sql): the big tables are read only over the job's span
    (SELECT (t0, t1, b) FROM job_window(job = {job:String}, since_s = {since_s:UInt32}, bucket_s = {bucket_s:UInt32})) AS w,
    w.1 AS t0, w.2 AS t1, w.3 AS b

SELECT pair.1 AS metric_a, pair.2 AS metric_b, round(pair.3, 3) AS r, pair.4 AS n
FROM (
    SELECT [
        ('gpu_util', 'power_w', corr(u, p), countIf(u IS NOT NULL AND p IS NOT NULL)),
        ('gpu_util', 'sm_clock_mhz', corr(u, c), countIf(u IS NOT NULL AND c IS NOT NULL)),
        ('gpu_util', 'ib_bytes_per_s', corr(u, ib), countIf(u IS NOT NULL AND ib IS NOT NULL)),
        ('gpu_util', 'step_s', corr(u, step), countIf(u IS NOT NULL AND step IS NOT NULL)),
        ('power_w', 'sm_clock_mhz', corr(p, c), countIf(p IS NOT NULL AND c IS NOT NULL)),
        ('power_w', 'ib_bytes_per_s', corr(p, ib), countIf(p IS NOT NULL AND ib IS NOT NULL)),
        ('power_w', 'step_s', corr(p, step), countIf(p IS NOT NULL AND step IS NOT NULL)),
        ('sm_clock_mhz', 'ib_bytes_per_s', corr(c, ib), countIf(c IS NOT NULL AND ib IS NOT NULL)),
        ('sm_clock_mhz', 'step_s', corr(c, step), countIf(c IS NOT NULL AND step IS NOT NULL)),
        ('ib_bytes_per_s', 'step_s', corr(ib, step), countIf(ib IS NOT NULL AND step IS NOT NULL))
    ] AS pairs
    FROM job_gpu_buckets(job = {job:String}, t0 = t0, t1 = t1, b = b) AS g
    LEFT JOIN (
        SELECT node, bucket, toNullable(sum(bytes) / uniqExact(ts)) AS ib
        FROM (
            SELECT node, ts, toStartOfInterval(ts, toIntervalSecond(b)) AS bucket,
                   ifNull(xmit_bytes_per_s, 0) + ifNull(rcv_bytes_per_s, 0) AS bytes
            FROM ib_samples
            WHERE job_id = {job:String} AND ts >= t0 AND ts < t1
              AND (xmit_bytes_per_s IS NOT NULL OR rcv_bytes_per_s IS NOT NULL)
        )
        GROUP BY node, bucket
    ) AS i ON i.node = g.node AND i.bucket = g.bucket
    LEFT JOIN (
        SELECT assumeNotNull(node) AS node, toStartOfInterval(ts, toIntervalSecond(b)) AS bucket,
               toNullable(quantileExactInclusive(0.5)(duration_s)) AS step
        FROM step_metrics
        WHERE job_id = {job:String} AND ts >= t0 AND ts < t1 AND node IS NOT NULL
        GROUP BY node, bucket
    ) AS s ON s.node = g.node AND s.bucket = g.bucket
)
ARRAY JOIN pairs AS pair
-- equal strengths in one order every time
ORDER BY isNaN(r), abs(r) DESC, metric_a, metric_b
