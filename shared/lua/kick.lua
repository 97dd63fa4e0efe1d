-- Enqueue a drain job unless one is waiting. ARGV: job_id, now_ms
if #ARGV ~= 2 or not int(ARGV[2]) or ARGV[1] == '' then return bad_args('kick') end
return ensure_drain(ARGV[1], int(ARGV[2]))
