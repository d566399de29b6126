#!/usr/bin/env bash
# make bench: Go micro-benchmarks, then an HTTP load run with wrk comparing
# GET /healthz through Atrium's full middleware stack against a bare
# net/http handler, then POS payments over HTTP against pgbench running the
# same two transactions on the same database, all measured in this run on
# this machine. Figures are reported as ratios against the baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
DURATION=${BENCH_DURATION:-5s}
CONNS=${BENCH_CONNS:-32}
ROUNDS=${BENCH_ROUNDS:-3}
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT
trap 'exit 130' INT TERM # so that the EXIT trap stops the servers

echo "== Go benchmarks (go test -bench) =="
go test -run '^$' -bench . -benchmem -count 1 ./... 2>&1 | grep -E '^(Benchmark|ok|FAIL|---)' | grep -v 'no test files' | tee "$OUT/go.txt"

# Auth figures from the lines above (modules/auth/bench_test.go): the edge's
# token check as a ratio of a bare ed25519.Verify of the same token in the
# same run, its network calls per request, and single-goroutine rates
# (1e9 / ns/op) for issuing tokens and logging in.
echo
echo "== Auth (modules/auth benchmarks above; ratios against raw ed25519.Verify in the same run) =="
awk '
  /^Benchmark/ {
    name = $1; sub(/-[0-9]+$/, "", name)
    for (i = 3; i <= NF; i++) {
      if ($i == "ns/op") { ns[name] += $(i-1); n[name]++ }
      if ($i == "db_calls/op") db[name] += $(i-1)
      if ($i == "redis_calls/op") rds[name] += $(i-1)
    }
  }
  function avg(k) { return (k in n) ? ns[k] / n[k] : 0 }
  function calls(k) { return (k in n) ? sprintf("%g db + %g redis", db[k] / n[k], rds[k] / n[k]) : "" }
  function ratiorow(label, k) {
    if (avg(k) == 0) { printf "%-40s %12s\n", label, "n/a"; return }
    printf "%-40s %12.0f %8s %22s\n", label, avg(k), (raw > 0 ? sprintf("%.2f", avg(k) / raw) : "n/a"), calls(k)
  }
  function raterow(label, k, unit) {
    if (avg(k) == 0) { printf "%-40s %12s\n", label, "n/a"; return }
    printf "%-40s %12.0f %12.1f %s\n", label, avg(k), 1e9 / avg(k), unit
  }
  END {
    raw = avg("BenchmarkEdgeAuth/raw_ed25519_verify")
    printf "%-40s %12s %8s %22s\n", "case", "ns/op", "ratio", "network calls/op"
    ratiorow("raw ed25519.Verify (baseline)", "BenchmarkEdgeAuth/raw_ed25519_verify")
    ratiorow("token parse + verify (s.parse)", "BenchmarkEdgeAuth/parse_verify")
    ratiorow("edge Authenticate middleware", "BenchmarkEdgeAuth/edge_authenticate")
    ratiorow("same token again (remembered)", "BenchmarkEdgeAuth/parse_remembered")
    print "target: edge Authenticate <= 1.30 x raw verify on a token'"'"'s first use, 0 db + 0 redis calls per request"
    printf "\n%-40s %12s %12s\n", "case (one goroutine)", "ns/op", "rate"
    raterow("token issue (s.issue)", "BenchmarkTokenIssue", "tokens/s")
    raterow("argon2id verify (default parameters)", "BenchmarkLogin/argon2id_verify", "checks/s")
    raterow("login (s.Login, whole)", "BenchmarkLogin/login", "logins/s")
  }
' "$OUT/go.txt"

# Rate-limit figures from the lines above (modules/quota/bench_test.go):
# decisions per second through Limiter.Allow as a ratio of redis-benchmark
# running the same script on the same Redis, non-pipelined, in the same run
# (one connection, then GOMAXPROCS connections), and what pipelining 16 deep
# gets. cpu-µs/op is the client's CPU per decision, steadier than the rates
# on a shared machine.
echo
echo "== Rate limits (modules/quota benchmarks above; ratios against redis-benchmark in the same run) =="
awk '
  /^Benchmark/ {
    name = $1; sub(/-[0-9]+$/, "", name)
    for (i = 3; i <= NF; i++) {
      if ($i == "decisions/s") rate[name] = $(i-1)
      if ($i == "cpu-µs/op") cpu[name] = $(i-1)
    }
  }
  function row(label, k, base) {
    if (!(k in rate)) { printf "%-44s %12s\n", label, "n/a"; return }
    printf "%-44s %12.0f %8s %10s\n", label, rate[k], (base != "" && rate[base] > 0 ? sprintf("%.2f", rate[k] / rate[base]) : ""), (k in cpu ? cpu[k] : "")
  }
  END {
    printf "%-44s %12s %8s %10s\n", "case", "decisions/s", "ratio", "cpu-µs/op"
    row("redis-benchmark, 1 connection (baseline)", "BenchmarkRedisBenchmark/c1", "BenchmarkRedisBenchmark/c1")
    row("Limiter.Allow, one goroutine", "BenchmarkAllow", "BenchmarkRedisBenchmark/c1")
    row("go-redis EVALSHA alone, one goroutine", "BenchmarkRawEvalsha", "BenchmarkRedisBenchmark/c1")
    row("redis-benchmark, GOMAXPROCS connections", "BenchmarkRedisBenchmark/cN", "BenchmarkRedisBenchmark/cN")
    row("Limiter.Allow, parallel", "BenchmarkAllowParallel", "BenchmarkRedisBenchmark/cN")
    row("redis-benchmark, pipelined 16 deep", "BenchmarkRedisBenchmark/cN-P16", "BenchmarkRedisBenchmark/cN")
    print "target: Limiter.Allow >= 0.80 x redis-benchmark, non-pipelined"
  }
' "$OUT/go.txt"

# GPU placement figures from the lines above (modules/gpu/placement_bench_test.go):
# a batch of 10 000 mixed replicas onto 1 000 simulated GPUs (125 nodes of
# 8 A100-40GB) per policy, placed one by one in arrival order (Place) and as
# a batch (PlaceAll, which tries several orders), NewPlacer included; then
# PlaceAll's quality on 200 small random instances as the mean of placed /
# the most that can be placed (exhaustive search), against Place in arrival
# order on the same instances, and the mean share of GPUs left stranded.
echo
echo "== GPU placement (modules/gpu benchmarks above) =="
awk '
  /^BenchmarkPlacement/ {
    name = $1; sub(/-[0-9]+$/, "", name); sub(/^BenchmarkPlacement/, "", name)
    for (i = 3; i <= NF; i++) {
      if ($i == "ns/op") ns[name] = $(i-1)
      if ($i == "placements/s") rate[name] = $(i-1)
      if ($i == "placed/op") placed[name] = $(i-1)
      if ($i == "placeall/optimum") qall[name] = $(i-1)
      if ($i == "arrival/optimum") qseq[name] = $(i-1)
      if ($i == "fragmentation") frag[name] = $(i-1)
    }
  }
  END {
    split("binpack spread least_loaded", pols, " ")
    printf "%-38s %12s %14s %10s %12s\n", "batch of 10 000 replicas", "ms/batch", "placements/s", "placed", "x Place"
    for (k = 1; k <= 3; k++) {
      pol = pols[k]; seq = "Throughput/" pol "/place"; all = "Throughput/" pol "/placeall"
      if (!(seq in ns)) { printf "%-38s %12s\n", pol, "n/a"; continue }
      printf "%-38s %12.1f %14.0f %10d %12s\n", pol ", Place in arrival order", ns[seq] / 1e6, rate[seq], placed[seq], "1.00"
      printf "%-38s %12.1f %14.0f %10d %12.2f\n", pol ", PlaceAll", ns[all] / 1e6, rate[all], placed[all], ns[all] / ns[seq]
    }
    for (k = 1; k <= 3; k++) {
      fit = "Throughput/" pols[k] "/fits"
      if (fit in ns) printf "%-38s %12.1f %14.0f %10d\n", pols[k] ", 10 000 that fit, arrival order", ns[fit] / 1e6, rate[fit], placed[fit]
    }
    print "target: all 10 000 that fit placed, a whole batch well under 1000 ms on a 2-core machine"
    printf "\n%-38s %18s %18s %14s\n", "200 small instances", "PlaceAll/optimum", "arrival/optimum", "fragmentation"
    for (k = 1; k <= 3; k++) {
      q = "Quality/" pols[k]
      if (!(q in qall)) { printf "%-38s %18s\n", pols[k], "n/a"; continue }
      printf "%-38s %18.4f %18.4f %14.4f\n", pols[k], qall[q], qseq[q], frag[q]
    }
    print "target: PlaceAll/optimum >= 0.98 with binpack"
  }
' "$OUT/go.txt"

# Inference router figures from the lines above (gpu_bench_test.go): the
# same chat completions sent to a fake-model replica directly, through a bare
# httputil.ReverseProxy (the floor of any proxy on this machine), and through
# Atrium's router (authentication, rate limit, metering, version and replica
# choice, proxying), one at a time and 16 at a time; then against a replica
# that takes 10 ms per request, like a small real model.
echo
echo "== Inference router (gpu_bench_test.go above; ratios against the direct calls in the same run) =="
awk '
  /^BenchmarkInferenceRouter/ {
    name = $1; sub(/-[0-9]+$/, "", name); sub(/^BenchmarkInferenceRouter\//, "", name)
    for (i = 3; i <= NF; i++) {
      if ($i == "p50_ms") p50[name] = $(i-1)
      if ($i == "p99_ms") p99[name] = $(i-1)
      if ($i == "req/s") rps[name] = $(i-1)
    }
  }
  function row(label, k, base) {
    if (!(k in rps)) { printf "%-34s %10s\n", label, "n/a"; return }
    printf "%-34s %10.3f %10.3f %10.0f %12.3f %10.2f\n", label, p50[k], p99[k], rps[k], p50[k] - p50[base], rps[k] / rps[base]
  }
  END {
    printf "%-34s %10s %10s %10s %12s %10s\n", "case", "p50 ms", "p99 ms", "req/s", "+p50 ms", "x direct"
    row("one at a time, direct", "c1/direct", "c1/direct")
    row("one at a time, bare proxy", "c1/bare_proxy", "c1/direct")
    row("one at a time, router", "c1/router", "c1/direct")
    row("16 at a time, direct", "c16/direct", "c16/direct")
    row("16 at a time, bare proxy", "c16/bare_proxy", "c16/direct")
    row("16 at a time, router", "c16/router", "c16/direct")
    row("10 ms model, 16 at a time, direct", "model10ms/c16/direct", "model10ms/c16/direct")
    row("10 ms model, 16 at a time, router", "model10ms/c16/router", "model10ms/c16/direct")
    print "target: router adds <= 1 ms at p50, throughput >= 0.7 x direct"
  }
' "$OUT/go.txt"

echo
echo "== HTTP load: GET /healthz, wrk -t1 -c$CONNS -d$DURATION, $ROUNDS alternating rounds =="
go build -o "$OUT/bare" ./scripts/bareserver
# A fresh database each run: its signing keys are sealed under this run's
# throwaway master key.
psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS atrium_bench WITH (FORCE)" -c "CREATE DATABASE atrium_bench" >/dev/null
"$OUT/bare" -addr 127.0.0.1:18081 &
# A simulated bank that answers at once: the payment figures measure Atrium.
./bin/atrium simbank --addr 127.0.0.1:18090 --p50 0 --p99 0 >"$OUT/simbank.log" 2>&1 &
# A throwaway master key, removed with $OUT. Whatever the bench instance seals
# with it (signing keys) cannot be opened by any other run.
(umask 077; head -c 32 /dev/urandom | base64 >"$OUT/master.key")
env -u ATRIUM_MASTER_KEY ATRIUM_MASTER_KEY_FILE="$OUT/master.key" \
  ATRIUM_ENV=production ATRIUM_LOG_LEVEL=info ATRIUM_MIGRATE_ON_START=true ATRIUM_HTTP_ADDR=127.0.0.1:18080 \
  ATRIUM_DATABASE_URL="$PG_URL/atrium_bench?sslmode=disable" ATRIUM_REDIS_URL="$REDIS_URL" ATRIUM_REDIS_PREFIX=atrium-bench \
  ATRIUM_PAYMENTS_CHANNELS=simbank=http://127.0.0.1:18090 ATRIUM_DATABASE_MAX_CONNS=${BENCH_DB_CONNS:-32} \
  ./bin/atrium serve >"$OUT/atrium.log" 2>&1 &
for _ in $(seq 1 50); do
  curl -fs http://127.0.0.1:18080/readyz >/dev/null 2>&1 && curl -fs http://127.0.0.1:18081/healthz >/dev/null 2>&1 && break
  sleep 0.2
done

rps() { wrk -t1 -c"$CONNS" -d"$DURATION" "$1" | awk '/Requests\/sec/ {print $2}'; }
bare=(); full=()
for r in $(seq 1 "$ROUNDS"); do
  bare+=("$(rps http://127.0.0.1:18081/healthz)")
  full+=("$(rps http://127.0.0.1:18080/healthz)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mb=$(median "${bare[@]}"); mf=$(median "${full[@]}")
printf '\n%-44s %14s %10s\n' "case" "req/s (median)" "ratio"
printf '%-44s %14.0f %10s\n' "bare net/http handler (baseline)" "$mb" "1.00"
printf '%-44s %14.0f %10.2f\n' "atrium full middleware stack" "$mf" "$(awk -v a="$mf" -v b="$mb" 'BEGIN {print a/b}')"
printf '\nrounds (bare): %s\nrounds (full): %s\ntarget: full stack >= 0.70 of the bare handler\n' "${bare[*]}" "${full[*]}"

echo
echo "== POS payments over HTTP (scripts/paybench) against pgbench running the same two transactions (scripts/payment.pgbench) =="
BENCH_PASSWORD="bench-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')"
echo "$BENCH_PASSWORD" | env -u ATRIUM_MASTER_KEY ATRIUM_MASTER_KEY_FILE="$OUT/master.key" \
  ATRIUM_DATABASE_URL="$PG_URL/atrium_bench?sslmode=disable" ATRIUM_REDIS_URL="$REDIS_URL" ATRIUM_REDIS_PREFIX=atrium-bench \
  ./bin/atrium admin create-user --email bench@atrium.local --role platform_admin --password-stdin >/dev/null
go build -o "$OUT/paybench" ./scripts/paybench
PAY_CLIENTS=${BENCH_PAY_CLIENTS:-16,64}
"$OUT/paybench" -url http://127.0.0.1:18080 -email bench@atrium.local -password "$BENCH_PASSWORD" \
  -clients "$PAY_CLIENTS" -duration "$DURATION" -ids "$OUT/ids" | tee "$OUT/pay.txt"
read -r TENANT MERCHANT <"$OUT/ids"
DB="$PG_URL/atrium_bench?sslmode=disable"
REF=$(psql "$DB" -Atc "SELECT ref FROM merchants WHERE id = '$MERCHANT'")
acct() { psql "$DB" -Atc "SELECT id FROM ledger_accounts WHERE tenant_id = '$TENANT' AND kind = '$1' AND livemode AND currency = 'EUR' AND merchant_id IS NOT DISTINCT FROM ${2:-NULL}"; }
CLEARING=$(acct bank_clearing); PAYABLE=$(acct merchant_payable "'$MERCHANT'"); FEES=$(acct fee_revenue)
printf '%-10s %12s %10s %10s\n' "clients" "tx pairs/s" "p50 ms" "p99 ms" >"$OUT/pg.txt"
for c in ${PAY_CLIENTS//,/ }; do
  pgbench -n -c "$c" -j 2 -T "${DURATION%s}" -r -f scripts/payment.pgbench -D tenant="$TENANT" -D ref="$REF" -D merchant="$MERCHANT" \
    -D clearing="$CLEARING" -D payable="$PAYABLE" -D fees="$FEES" --log --log-prefix="$OUT/pgb$c" "$DB" >"$OUT/pgbench$c.txt" 2>&1 || { cat "$OUT/pgbench$c.txt"; exit 1; }
  tps=$(awk '/^tps/ {print $3; exit}' "$OUT/pgbench$c.txt")
  # Per-transaction latencies (µs, third column of pgbench's log): p50 and p99.
  read -r p50 p99 < <(cat "$OUT"/pgb"$c"* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%.2f %.2f\n", a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000}')
  printf '%-10s %12.0f %10s %10s\n' "$c" "$tps" "$p50" "$p99" >>"$OUT/pg.txt"
  rm -f "$OUT"/pgb"$c"*
done
echo; cat "$OUT/pg.txt"
echo
awk 'FNR == 1 { f++ ; next } f == 1 { pay[$1] = $2; p50[$1] = $3; p99[$1] = $4 } f == 2 { pg[$1] = $2 }
  END {
    printf "%-10s %14s %14s %8s %14s\n", "clients", "payments/s", "pgbench tps", "ratio", "p50/p99 ms"
    for (c in pay) printf "%-10s %14.0f %14.0f %8.2f %14s\n", c, pay[c], pg[c], (pg[c] > 0 ? pay[c] / pg[c] : 0), p50[c] "/" p99[c]
    print "target: >= 0.60 x pgbench running the same two transactions"
  }' "$OUT/pay.txt" "$OUT/pg.txt"
