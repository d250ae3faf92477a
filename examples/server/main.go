// Command server is chatscale's example server: a tutor chat over HTTP
// (JSON, Server-Sent Events and a chat page) on top of chat.Service.
//
// With no environment it runs on its own: Redis embedded in the process,
// sample transcripts, an offline model, anonymous learners. Each variable
// the README lists swaps an embedded part for a real one (Redis, MongoDB,
// an OpenAI-compatible API, HMAC bearer tokens).
//
//	go run ./examples/server
//	curl -s localhost:8080/v1/chat -H 'Content-Type: application/json' \
//	  -d '{"course_id":"demo-course","video_url":"intro","message":"What are goroutines?"}'
//
// The job routes (POST /v1/jobs, GET /v1/jobs/{id}) queue turns in the
// server's Redis, embedded or real; a worker in the process runs them.
//
// SIGINT or SIGTERM drains: new requests get 503 while the turns,
// streams and jobs in flight finish, for at most DRAIN_TIMEOUT.
//
// With AUTH_SECRET set, -mint-token prints a bearer token for a learner:
//
//	AUTH_SECRET=... go run ./examples/server -mint-token ada
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/chatscale/chatscale/examples/server/app"
)

func main() {
	mint := flag.String("mint-token", "", "print a bearer token for this learner ID, signed with AUTH_SECRET, and exit")
	ttl := flag.Duration("token-ttl", 24*time.Hour, "how long a token made by -mint-token is valid")
	flag.Parse()

	cfg, err := app.FromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "examples/server: bad configuration:\n%v\n", err)
		os.Exit(2)
	}
	if *mint != "" {
		if len(cfg.AuthSecret) == 0 {
			fmt.Fprintln(os.Stderr, "examples/server: -mint-token needs AUTH_SECRET")
			os.Exit(2)
		}
		fmt.Println(app.SignToken(cfg.AuthSecret, *mint, *ttl, time.Now()))
		return
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	if err := run(cfg, log); err != nil {
		log.Error("examples/server", "err", err)
		os.Exit(1)
	}
}

func run(cfg app.Config, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	a, err := app.New(ctx, cfg, app.Options{Logger: log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	if err != nil {
		_ = a.Close(context.Background())
		return fmt.Errorf("PORT: %w", err)
	}
	return app.Serve(ctx, a, ln)
}
