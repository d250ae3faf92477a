package app_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chatscale/chatscale/examples/server/app"
	"github.com/chatscale/chatscale/internal/testutil"
)

// serve runs app.Serve for an App built from cfg on a port of 127.0.0.1
// until stop is called; Serve's error arrives on the channel.
func serve(t *testing.T, cfg app.Config) (l *learner, logs *syncBuffer, stop func(), errc <-chan error) {
	t.Helper()
	logs = &syncBuffer{}
	a, err := app.New(t.Context(), cfg, app.Options{Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close(context.Background()) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		done <- app.Serve(ctx, a, ln)
	}()
	t.Cleanup(func() {
		cancel()
		<-returned
	})
	return newLearner(t, "http://"+ln.Addr().String()), logs, cancel, done
}

// inFlightRE matches the chat.Client's gauge of upstream calls in flight
// when one runs.
var inFlightRE = regexp.MustCompile(`(?m)^ai_chat_client_in_flight(\{[^}]*\})? 1$`)

// runningJob submits a slow job and waits until its turn is calling the
// model. The job's state "active" is not enough: asynq marks a job active
// when it takes it, a moment before the worker's handler starts.
func runningJob(t *testing.T, l *learner) {
	t.Helper()
	id := l.submit(ask("What will we build in this course, and how does net/http serve requests?"))
	if !testutil.Eventually(10*time.Second, func() bool { return inFlightRE.Match(l.get("/metrics").body) }) {
		t.Fatalf("the job's turn never called the model: %s", l.job(id, "").body)
	}
	if r := l.job(id, ""); r.json(t)["state"] != "active" {
		t.Fatalf("the job calling the model is not active: %s", r.body)
	}
}

// TestServeDrainsJobs: at shutdown, the worker closes after the HTTP
// drain and lets a running job finish within the drain timeout; past it,
// the job is handed back to the queue and Serve says so.
func TestServeDrainsJobs(t *testing.T) {
	t.Parallel()

	t.Run("finished", func(t *testing.T) {
		t.Parallel()
		// About 40 words at 50 ms: the job runs for about 2 s.
		l, logs, stop, errc := serve(t, app.Config{OfflineDelay: 50 * time.Millisecond, DrainTimeout: 20 * time.Second})
		runningJob(t, l)
		stop()
		if err := <-errc; err != nil {
			t.Fatalf("Serve: %v\n%s", err, logs)
		}
		log := logs.String()
		draining := strings.Index(log, `msg="draining`)
		turn := strings.Index(log, `msg="chat: turn" status=ok`)
		if draining < 0 || turn < draining || !strings.Contains(log, "drained=true") {
			t.Errorf("the job's turn did not finish during the drain:\n%s", log)
		}
	})

	t.Run("handed back", func(t *testing.T) {
		t.Parallel()
		// About 40 words at 1 s, a drain of 1 s.
		l, logs, stop, errc := serve(t, app.Config{OfflineDelay: time.Second, DrainTimeout: time.Second})
		runningJob(t, l)
		start := time.Now()
		stop()
		if err := <-errc; !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Serve = %v, want the worker's Close to report the job handed back\n%s", err, logs)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("the shutdown took %v with a drain timeout of 1 s", took)
		}
	})
}
