-- name: gpu_outliers
-- group: diagnostics
-- what: the job's GPUs ranked by how far they sit from their peers: per time bucket, each GPU's mean utilisation, power and SM clock against the job's GPUs (robust z), with the anomalies raised on it
-- param: job String              the job id
-- param: k Float64 = 5           robust deviations (1.4826 x MAD, at least 3 %, 15 W, 50 MHz) from the job's median that make a bucket outlying
-- param: bucket_s UInt32 = 0     time bucket, seconds (0: about 60 over a job of up to an hour, about 120 whole minutes beyond)
-- param: since_s UInt32 = 0      only the last since_s seconds of the job (0: all of it)
--
-- outlying_share: the share of the GPU's buckets in which some metric was more than k robust
-- deviations from the median of the job's GPUs; util/power_w/sm_clock_mhz and peers_*: the GPU's
-- mean and its peers' median, averaged over its outlying buckets (over all of them if none); z_*:
-- the largest robust z of each metric. anomalies: kinds raised on the GPU while the job ran.
WITH
    -- the job's window [t0, t1) and bucket b (seconds), from the view job_window
    -- (sinks/queries/views/job_window.sql): the big tables are read only over the job's span
    (SELECT (t0, t1, b) FROM job_window(job = {job:String}, since_s = {since_s:UInt32}, bucket_s = {bucket_s:UInt32})) AS w,
    w.1 AS t0, w.2 AS t1, w.3 AS b,
    (SELECT groupArray((gpu_uuid, kinds)) FROM (
        SELECT assumeNotNull(gpu_uuid) AS gpu_uuid, arrayStringConcat(arraySort(groupUniqArray(kind)), ', ') AS kinds
        FROM anomalies FINAL WHERE gpu_uuid IS NOT NULL AND ts >= t0 AND ts <= t1 + toIntervalMinute(10) GROUP BY gpu_uuid)) AS flags
SELECT
    node, gpu_index AS gpu, gpu_uuid,
    count() AS buckets,
    countIf(out) AS outlying_buckets,
    round(outlying_buckets / buckets, 3) AS outlying_share,
    round(max(worst), 1) AS max_abs_z,
    round(if(outlying_buckets > 0, avgIf(u, out), avg(u)), 1) AS util,
    round(if(outlying_buckets > 0, avgIf(mu, out), avg(mu)), 1) AS peers_util,
    round(if(outlying_buckets > 0, avgIf(p, out), avg(p)), 1) AS power_w,
    round(if(outlying_buckets > 0, avgIf(mp, out), avg(mp)), 1) AS peers_power_w,
    round(if(outlying_buckets > 0, avgIf(c, out), avg(c)), 0) AS sm_clock_mhz,
    round(if(outlying_buckets > 0, avgIf(mc, out), avg(mc)), 0) AS peers_sm_clock_mhz,
    round(argMax(zu, abs(zu)), 1) AS z_util,
    round(argMax(zp, abs(zp)), 1) AS z_power,
    round(argMax(zc, abs(zc)), 1) AS z_sm_clock,
    if(outlying_buckets > 0, minIf(bucket, out), NULL) AS first_outlying,
    if(outlying_buckets > 0, maxIf(bucket, out) + toIntervalSecond(any(b)), NULL) AS last_outlying,
    max(peers) AS peers,
    any(b) AS bucket_s,
    arrayFirst(f -> f.1 = gpu_uuid, flags).2 AS anomalies
FROM (
    SELECT bucket, g.1 AS node, g.2 AS gpu_index, g.3 AS gpu_uuid, g.4 AS u, g.5 AS p, g.6 AS c, mu, mp, mc, peers,
           (u - mu) / greatest(1.4826 * du, 3) AS zu,
           (p - mp) / greatest(1.4826 * dp, 15) AS zp,
           (c - mc) / greatest(1.4826 * dc, 50) AS zc,
           greatest(abs(ifNull(zu, 0)), abs(ifNull(zp, 0)), abs(ifNull(zc, 0))) AS worst,
           worst > {k:Float64} AS out
    FROM (
        SELECT bucket, groupArray((node, gpu_index, gpu_uuid, u, p, c)) AS gpus, count() AS peers,
               quantileExactInclusive(0.5)(u) AS mu, quantileExactInclusive(0.5)(p) AS mp, quantileExactInclusive(0.5)(c) AS mc,
               arrayReduce('quantileExactInclusive(0.5)', arrayMap(x -> abs(x.4 - mu), gpus)) AS du,
               arrayReduce('quantileExactInclusive(0.5)', arrayMap(x -> abs(x.5 - mp), gpus)) AS dp,
               arrayReduce('quantileExactInclusive(0.5)', arrayMap(x -> abs(x.6 - mc), gpus)) AS dc
        FROM job_gpu_buckets(job = {job:String}, t0 = t0, t1 = t1, b = b)
        GROUP BY bucket
    )
    ARRAY JOIN gpus AS g
)
GROUP BY node, gpu_index, gpu_uuid
ORDER BY outlying_share DESC, max_abs_z DESC, node, gpu
