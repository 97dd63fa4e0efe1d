-- Enqueue a drain job unless one is waiting. ARGV: job_id, now_ms, marker_ttl_ms
return ensure_drain(ARGV[1], tonumber(ARGV[2]), ARGV[3])
