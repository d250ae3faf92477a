package app

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/chatscale/chatscale/chat"
)

// Limits and timeouts of the HTTP layer.
const (
	// MaxBodyBytes bounds a request body; a larger one is answered 413.
	// It leaves room for the largest message the Service accepts
	// (chat.DefaultMaxMessageBytes) and a video URL.
	MaxBodyBytes = 64 << 10
	// ReadHeaderTimeout, ReadTimeout and IdleTimeout are the
	// http.Server's.
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 15 * time.Second
	IdleTimeout       = 120 * time.Second
	// WriteTimeout bounds writing a response: a turn (chat's
	// DefaultTurnTimeout) and some margin. A stream moves the deadline
	// forward at each event, so a long stream is not cut.
	WriteTimeout = chat.DefaultTurnTimeout + 10*time.Second
)

// HTTPServer returns an http.Server for the App's handler with the
// timeouts above.
func (a *App) HTTPServer() *http.Server {
	return &http.Server{
		Handler:           a.handler,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
}

// Serve serves the App on ln until ctx ends, then shuts down gracefully:
// new requests are answered 503 while the ones in flight (streams
// included) finish, for at most Config.DrainTimeout; then the listener
// closes, whatever still runs is cancelled, and the App is closed with
// what remains of the drain time: the job worker first (its running jobs
// finish, or are handed back to the queue when the time is over), then
// the Service and the rest.
func Serve(ctx context.Context, a *App, ln net.Listener) error {
	srv := a.HTTPServer()
	// Cancelled when the drain time is over: every request's context
	// derives from it, so the turns still running stop.
	hard, cut := context.WithCancel(context.WithoutCancel(ctx))
	defer cut()
	srv.BaseContext = func(net.Listener) context.Context { return hard }
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	a.log.Info("listening", "addr", ln.Addr().String())

	select {
	case err := <-errc:
		_ = a.Close(context.Background())
		return err
	case <-ctx.Done():
	}
	start := time.Now()
	a.log.Info("draining: new requests get 503", "timeout", a.cfg.DrainTimeout)
	dctx, cancel := context.WithTimeout(context.Background(), a.cfg.DrainTimeout)
	defer cancel()
	srv.SetKeepAlivesEnabled(false)
	drainErr := a.Drain(dctx)
	if drainErr != nil {
		a.log.Warn("drain timeout: cancelling the requests still in flight")
		cut()
	}
	shutErr := srv.Shutdown(dctx)
	if shutErr != nil {
		_ = srv.Close()
	}
	// The job worker and then the Service get what remains of the drain
	// time, at least a second to let cancelled turns unwind.
	cctx, ccancel := context.WithTimeout(context.Background(), max(time.Second, time.Until(start.Add(a.cfg.DrainTimeout))))
	defer ccancel()
	closeErr := a.Close(cctx)
	a.log.Info("stopped", "took", time.Since(start).Round(time.Millisecond), "drained", drainErr == nil)
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return errors.Join(drainErr, closeErr)
}
