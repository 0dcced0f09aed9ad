-- The SQL benchmark's queries (`cargo bench -p query-integration --bench sql`), run by both
-- Query and DuckDB on the same data. Each query starts with a line `-- name: <name>`; a
-- block starting `-- duckdb: <name>` replaces that query's text for DuckDB only. DuckDB
-- runs with `SET integer_division = true`, so `/` between integers stays integer there too
-- (as in Query and the papers) and `error_on_division_by_zero = false`, so both engines
-- yield NULL for a division by zero.

-- name: paper_dns_rss
-- LISA 2010, section 1: processes on dns machines using more than 75% of memory for RSS.
SELECT sys.machine_ip ip, procname, rss, pid
FROM sys, processes
WHERE sys.machine_ip = processes.machine_ip
  AND (rss*100)/sys.memtotal > 75
  AND sys.machine_ip in
    (SELECT machine_ip
    FROM machinerole
    WHERE role='dns')
ORDER BY ip;

-- name: paper_hits_per_continent
-- LISA 2010, section 4.4: hits per continent, published data joined with static tables.
SELECT c.continent_name,
SUM(l.hits) hits
FROM load_info l,
region_data r,
continent_data c
WHERE l.georegion=r.id AND
r.continent=c.continent
GROUP BY c.continent_name
ORDER BY hits DESC;

-- name: paper_low_disk
-- LISA 2010, section 5.1: disks with less than 3% free (integer percent, as in the paper).
SELECT
    machine_ip
                   ip_key,
    mountp
                  mnt_key,
    bavail*bsize free_space,
    (100*bavail)/blocks pct
FROM
    filesystem a
WHERE
    blocks > 0 and
    (100*bavail)/blocks < 3
ORDER BY ip_key;

-- name: alert_high_load
-- Machines with a high 1-minute load, with their region and continent (static tables).
SELECT s.machine_ip, s.hostname, r.name AS region, c.continent_name, s.load1
FROM sys s
JOIN region_data r ON s.georegion = r.id
JOIN continent_data c ON r.continent = c.continent
WHERE s.load1 > 3.5

-- name: alert_interface_drops
-- Non-loopback interfaces dropping packets, with the machine's cluster.
SELECT n.machine_ip, n.name, n.rx_drops, s.cluster
FROM network_interfaces n
JOIN sys s ON n.machine_ip = s.machine_ip
WHERE n.name <> 'lo' AND n.rx_drops > 100000

-- name: alert_media_without_mediad
-- Media machines with no media daemon running (anti-join, correlated NOT EXISTS).
SELECT m.machine_ip
FROM machinerole m
WHERE m.role = 'media'
  AND NOT EXISTS (SELECT 1 FROM processes p
                  WHERE p.machine_ip = m.machine_ip AND p.procname = 'mediad')

-- name: alert_recent_restarts
-- Processes started within a day of the newest process start, per name (timestamps).
SELECT procname, COUNT(*) AS started
FROM processes
WHERE start_time > (SELECT MAX(start_time) FROM processes) - INTERVAL '1 day'
GROUP BY procname

-- name: view_memory_by_cluster
-- Memory use per cluster from the machine_memory view (integer percent), clusters with a
-- machine at 50% or more.
SELECT cluster, COUNT(*) AS machines, AVG(mem_pct) AS avg_pct, MAX(mem_pct) AS max_pct
FROM machine_memory
GROUP BY cluster
HAVING MAX(mem_pct) >= 50

-- name: view_memory_histogram
-- Machines per 10% band of memory use (a view, integer division as bucketing), the band
-- computed in a subquery.
SELECT band, COUNT(*) AS machines
FROM (SELECT (mem_pct / 10) * 10 AS band FROM machine_memory) m
GROUP BY band

-- name: view_cluster_summary
-- The cluster_summary view, busiest clusters only.
SELECT cluster, machines, memtotal, load1_avg, load1_max
FROM cluster_summary
WHERE load1_max > 3.0

-- name: report_role_memory
-- Per role: machines, memory (MiB) and mean load.
SELECT m.role, COUNT(DISTINCT s.machine_ip) AS machines,
       SUM(s.memtotal) / 1024 AS memtotal_mib, AVG(s.load1) AS load1_avg
FROM machinerole m
JOIN sys s ON m.machine_ip = s.machine_ip
GROUP BY m.role

-- name: report_top_rss_per_cluster
-- The three largest processes of each cluster (window function over a join).
WITH ranked AS (
  SELECT s.cluster, p.machine_ip, p.procname, p.pid, p.rss,
         ROW_NUMBER() OVER (PARTITION BY s.cluster
                            ORDER BY p.rss DESC, p.machine_ip, p.pid) AS rn
  FROM processes p
  JOIN sys s ON p.machine_ip = s.machine_ip
)
SELECT cluster, machine_ip, procname, pid, rss
FROM ranked
WHERE rn <= 3

-- name: report_procs_by_name
-- Per process name: count, total RSS, mean CPU time, most threads.
SELECT procname, COUNT(*) AS n, SUM(rss) AS rss_total, AVG(cpu_seconds) AS cpu_avg,
       MAX(threads) AS threads_max
FROM processes
GROUP BY procname
HAVING COUNT(*) > 10

-- name: report_disk_by_continent
-- Disk space per continent and filesystem type: four-way join, integer percent free.
SELECT c.continent_name, f.fstype, COUNT(*) AS disks,
       SUM(f.blocks * f.bsize) / 1073741824 AS total_gib,
       (100 * SUM(f.bavail)) / SUM(f.blocks) AS pct_free
FROM filesystem f
JOIN sys s ON f.machine_ip = s.machine_ip
JOIN region_data r ON s.georegion = r.id
JOIN continent_data c ON r.continent = c.continent
GROUP BY c.continent_name, f.fstype

-- name: report_network_per_cluster
-- Traffic and errors per cluster, loopback excluded.
SELECT s.cluster, SUM(n.rx_bytes) AS rx_bytes, SUM(n.tx_bytes) AS tx_bytes,
       SUM(n.rx_errors + n.tx_errors) AS errors
FROM network_interfaces n
JOIN sys s ON n.machine_ip = s.machine_ip
WHERE n.name <> 'lo'
GROUP BY s.cluster

-- name: report_error_rate_per_region
-- Hits and error rate (per mille, integer) per end-user region and country.
SELECT r.country, r.name, SUM(l.hits) AS hits, SUM(l.errors) AS errors,
       (1000 * SUM(l.errors)) / SUM(l.hits) AS errors_permille
FROM load_info l
JOIN region_data r ON l.georegion = r.id
GROUP BY r.country, r.name
HAVING SUM(l.hits) > 0
