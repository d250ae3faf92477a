package threads_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/threads"
)

const (
	failoverLearners  = 50
	failoverDownAfter = time.Second
)

// TestRedisFailover kills a Sentinel-managed master with SIGKILL under
// concurrent appends (50 learners, one thread each) and counts the
// acknowledged messages (Append returned nil) missing from the promoted
// replica. Each run starts its own master, two replicas and one Sentinel
// (down-after 1 s) on free loopback ports. Four runs use WaitReplicas 1
// and assert that no acknowledged message is missing; two run without and
// report the count (Redis replicates asynchronously: the appends the
// master acknowledged but had not yet sent to the promoted replica are
// gone; how many depends on timing). In the "lagging" runs both replicas
// are frozen (SIGSTOP) for the last moments before the kill, as replicas
// that fell behind would be: with WaitReplicas the appends made meanwhile
// fail with ErrNotReplicated instead of being acknowledged (on loopback
// the replicas still receive, once resumed, what the master had written
// to their sockets before it died, so without WaitReplicas these runs
// need not lose anything either). It runs in the real-Redis pass
// (CHATSCALE_REDIS_URL set) and needs redis-server; it takes about 30 s.
func TestRedisFailover(t *testing.T) {
	if os.Getenv(testutil.EnvRedisURL) == "" {
		t.Skip("runs with the real-Redis tests (set CHATSCALE_REDIS_URL): it starts its own Redis master, replicas and Sentinel")
	}
	runs := []struct {
		wait int
		lag  bool
	}{{1, false}, {1, false}, {1, false}, {1, true}, {0, false}, {0, true}}
	for i, run := range runs {
		name := fmt.Sprintf("WaitReplicas=%d/%d", run.wait, i)
		if run.lag {
			name += "/lagging"
		}
		t.Run(name, func(t *testing.T) {
			r := failoverRun(t, run.wait, run.lag)
			t.Logf("WaitReplicas=%d lagging=%v: %d appends acknowledged, %d of them missing after the failover; first acknowledged append %v after the kill",
				run.wait, run.lag, r.acked, r.missing, r.recovery)
			if run.wait > 0 && r.missing != 0 {
				t.Errorf("%d acknowledged messages are missing from the promoted replica; want 0 with WaitReplicas %d", r.missing, run.wait)
			}
		})
	}
}

type failoverResult struct {
	acked, missing int
	recovery       time.Duration
}

func failoverRun(t *testing.T, waitReplicas int, lag bool) failoverResult {
	set := testutil.StartSentinelSet(t, 2, failoverDownAfter)
	// The client options the README advises: ctx deadlines honoured on the
	// socket, no retries of a read that timed out.
	fc := set.FailoverClient(&redis.FailoverOptions{
		DialTimeout: 200 * time.Millisecond, ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond,
		PoolSize: 2 * failoverLearners, ContextTimeoutEnabled: true, MaxRetries: -1,
	})
	st := newRedis(t, fc, threads.Config{MaxMessages: -1, WaitReplicas: waitReplicas, WaitTimeout: 200 * time.Millisecond})
	ctx := context.Background()
	if err := st.LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, failoverLearners)
	for i := range ids {
		sess, err := st.Open(ctx, threads.OpenRequest{UserID: fmt.Sprint("learner-", i), CourseID: "c"})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = sess.Thread.ID
	}

	var (
		stop      = make(chan struct{})
		wg        sync.WaitGroup
		total     atomic.Int64 // acknowledged appends
		calls     atomic.Int64 // appends done, acknowledged or not
		afterKill atomic.Int64 // acknowledged appends that started after the kill
		killedAt  atomic.Int64 // unix ns, 0 before the kill
		firstAck  atomic.Int64 // unix ns of the first acknowledged append started after the kill
		acked     = make([][]int, failoverLearners)
		errCounts sync.Map
		lastErr   sync.Map
	)
	const maxAppends = 20_000 // per learner: the loops end by count too
	for l := range failoverLearners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range maxAppends {
				select {
				case <-stop:
					return
				default:
				}
				started := time.Now().UnixNano()
				callCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
				err := st.Append(callCtx, ids[l], threads.Message{Role: threads.RoleUser, Content: "turn", ID: strconv.Itoa(j)})
				cancel()
				calls.Add(1)
				if err != nil {
					kind := "other"
					switch {
					case errors.Is(err, threads.ErrNotReplicated):
						kind = "not replicated"
					case errors.Is(err, threads.ErrUnavailable):
						kind = "unavailable"
					case errors.Is(err, context.DeadlineExceeded):
						kind = "deadline"
					}
					n, _ := errCounts.LoadOrStore(kind, new(atomic.Int64))
					n.(*atomic.Int64).Add(1)
					lastErr.Store(kind, err)
					continue
				}
				acked[l] = append(acked[l], j)
				total.Add(1)
				if k := killedAt.Load(); k != 0 && started > k {
					afterKill.Add(1)
					firstAck.CompareAndSwap(0, time.Now().UnixNano())
				}
			}
		}()
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	if !testutil.Eventually(20*time.Second, func() bool { return total.Load() >= 2000 }) {
		t.Fatalf("only %d appends acknowledged before the kill", total.Load())
	}
	if lag {
		for _, r := range set.Replicas {
			r.Stop()
		}
		from := calls.Load()
		if !testutil.Eventually(20*time.Second, func() bool { return calls.Load() >= from+2*failoverLearners }) {
			t.Fatal("the appends stalled while the replicas were frozen")
		}
	}
	killedAt.Store(time.Now().UnixNano())
	set.Master.Kill()
	if lag {
		for _, r := range set.Replicas {
			r.Cont()
		}
	}
	recovered := testutil.Eventually(30*time.Second, func() bool { return afterKill.Load() >= 10*failoverLearners })
	close(stop)
	wg.Wait()
	errCounts.Range(func(k, v any) bool {
		t.Logf("appends that failed (%s): %d", k, v.(*atomic.Int64).Load())
		return true
	})
	lastErr.Range(func(k, v any) bool {
		t.Logf("last error (%s): %v", k, v)
		return true
	})
	if !recovered {
		t.Fatalf("only %d appends acknowledged in the 30 s after the kill", afterKill.Load())
	}

	addr, err := set.MasterAddr(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if addr == set.Master.Addr {
		t.Fatalf("the Sentinel still names the killed master %s", addr)
	}
	promoted := redis.NewClient(&redis.Options{Addr: addr})
	defer promoted.Close()
	reader := newRedis(t, promoted, threads.Config{MaxMessages: -1})
	r := failoverResult{acked: int(total.Load()), recovery: time.Duration(firstAck.Load() - killedAt.Load())}
	for l, id := range ids {
		h, err := reader.History(ctx, id, 0)
		if err != nil && !errors.Is(err, threads.ErrNotFound) {
			t.Fatal(err)
		}
		kept := map[string]bool{}
		for _, m := range h {
			if kept[m.ID] {
				t.Errorf("learner %d: message %s stored twice", l, m.ID)
			}
			kept[m.ID] = true
		}
		for _, j := range acked[l] {
			if !kept[strconv.Itoa(j)] {
				r.missing++
			}
		}
	}
	return r
}
