package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine they started is
// still running after the last one.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// These tests build the server binary and run it, as a user would, on a
// free port of 127.0.0.1.

// build compiles the server into a temporary directory.
func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "server")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// configVars start the names of the variables the server reads: they are
// dropped from the environment the tests pass on, so that a developer's
// OPENAI_API_KEY or REDIS_URL does not reach the server under test.
var configVars = []string{"PORT=", "LISTEN_HOST=", "AUTH_SECRET=", "REDIS_", "MONGODB_", "OPENAI_", "CHAT_",
	"UPSTREAM_", "LEARNER_", "DRAIN_TIMEOUT=", "OFFLINE_MODEL_", "LOG_LEVEL="}

// environ returns the test's environment without the server's variables,
// plus env.
func environ(env ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !slices.ContainsFunc(configVars, func(p string) bool { return strings.HasPrefix(kv, p) }) {
			out = append(out, kv)
		}
	}
	return append(out, env...)
}

// poll calls cond every 10 ms until it holds or d has passed, and reports
// whether it held.
func poll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// proc is a running server binary.
type proc struct {
	cmd  *exec.Cmd
	addr string // host:port it listens on
	done chan struct{}
	err  error // Wait's, once done is closed

	mu     sync.Mutex
	stderr bytes.Buffer
}

// log returns what the server has logged so far.
func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

var listeningRE = regexp.MustCompile(`msg=listening addr=(\S+)`)

// startBinary starts the binary with env (added to PORT=0, which picks a free
// port, and LISTEN_HOST=127.0.0.1) and waits until it listens. The
// process is stopped at the end of the test if it still runs.
func startBinary(t *testing.T, bin string, env ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = environ(append([]string{"PORT=0", "LISTEN_HOST=127.0.0.1"}, env...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.Write(sc.Bytes())
			p.stderr.WriteByte('\n')
			p.mu.Unlock()
			if m := listeningRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
			return
		default:
		}
		_ = cmd.Process.Kill()
		<-p.done
	})
	select {
	case p.addr = <-addr:
	case <-p.done:
		t.Fatalf("the server exited before listening: %v\n%s", p.err, p.log())
	case <-time.After(30 * time.Second):
		t.Fatalf("the server did not listen within 30 s:\n%s", p.log())
	}
	return p
}

// wait waits for the process to exit within d and returns its error.
func (p *proc) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		t.Fatalf("the server did not exit within %v:\n%s", d, p.log())
		return nil
	}
}

// readmeCommands returns the commands of the README's fenced block that
// follows the marker comment, with continuation lines joined and comments
// dropped.
func readmeCommands(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const marker = "<!-- curl: the commands below are run by examples/server/main_test.go -->"
	_, rest, ok := strings.Cut(string(b), marker)
	if !ok {
		t.Fatalf("README.md has no %q", marker)
	}
	_, rest, ok = strings.Cut(rest, "```sh\n")
	if !ok {
		t.Fatal("no ```sh block after the marker in README.md")
	}
	block, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("the ```sh block after the marker does not end")
	}
	var cmds []string
	cur := ""
	for line := range strings.SplitSeq(block, "\n") {
		trimmed := strings.TrimSpace(line)
		if cur == "" && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if c, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur += c + " "
			continue
		}
		cmds = append(cmds, cur+trimmed)
		cur = ""
	}
	return cmds
}

// TestREADMECurl runs the README's curl commands, as written, against the
// built binary started with no configuration, so that the README cannot
// drift from the server.
func TestREADMECurl(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed: the README's commands cannot be run")
	}
	cmds := readmeCommands(t)
	for _, route := range []string{"/v1/chat ", "/v1/chat/stream", "/v1/jobs ", "/v1/jobs/", "/v1/history", "/v1/me"} {
		found := false
		for _, c := range cmds {
			found = found || strings.Contains(c+" ", route)
		}
		if !found {
			t.Errorf("the README's commands do not use %s", route)
		}
	}
	p := startBinary(t, build(t))
	dir := t.TempDir() // the commands' cookie jar goes here
	for _, c := range cmds {
		if !strings.Contains(c, "localhost:8080") {
			t.Errorf("README command %q does not name localhost:8080", c)
			continue
		}
		line := strings.ReplaceAll(c, "localhost:8080", p.addr)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		cmd := exec.CommandContext(ctx, "sh", "-c", line)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil || len(bytes.TrimSpace(out)) == 0 {
			t.Errorf("README command %q: %v\n%s\nserver log:\n%s", c, err, out, p.log())
			continue
		}
		t.Logf("$ %s\n%s", c, out)
		switch {
		case strings.Contains(c, "/v1/jobs/"):
			var r struct {
				State string `json:"state"`
				Reply string `json:"reply"`
			}
			if json.Unmarshal(out, &r) != nil || r.State != "done" || r.Reply == "" {
				t.Errorf("%q printed no done job with a reply:\n%s", c, out)
			}
		case strings.Contains(c, "/v1/chat/stream"):
			if !bytes.Contains(out, []byte("event: delta")) || !bytes.Contains(out, []byte("event: done")) {
				t.Errorf("%q printed no delta and done events:\n%s", c, out)
			}
		case strings.Contains(c, "/v1/chat "):
			var r struct {
				Reply    string `json:"reply"`
				ThreadID string `json:"thread_id"`
			}
			if json.Unmarshal(out, &r) != nil || r.Reply == "" || r.ThreadID == "" {
				t.Errorf("%q printed no reply:\n%s", c, out)
			}
		}
	}
}

// TestDrain: SIGTERM during a slow streamed turn lets the stream finish,
// answers new requests 503 meanwhile, and the process exits 0 within the
// drain timeout.
func TestDrain(t *testing.T) {
	const drain = 20 * time.Second
	p := startBinary(t, build(t), "OFFLINE_MODEL_DELAY=50ms", "DRAIN_TIMEOUT="+drain.String())
	base := "http://" + p.addr
	body := `{"course_id":"demo-course","video_url":"intro","message":"What will we build in this course, and how does net/http serve requests?"}`
	resp, err := http.Post(base+"/v1/chat/stream", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("stream: %d %s", resp.StatusCode, b)
	}
	events := bufio.NewReader(resp.Body)
	first, err := events.ReadString('\n')
	if err != nil || first != "event: delta\n" {
		t.Fatalf("first line of the stream %q, %v", first, err)
	}

	sigterm := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// New requests, on new connections, are refused while the stream runs.
	refuse := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	var last string
	if !poll(5*time.Second, func() bool {
		r, err := refuse.Get(base + "/readyz")
		if err != nil {
			last = err.Error()
			return false
		}
		r.Body.Close()
		last = r.Status
		return r.StatusCode == http.StatusServiceUnavailable
	}) {
		t.Fatalf("/readyz never answered 503 after SIGTERM (last: %s)\n%s", last, p.log())
	}
	r, err := refuse.Post(base+"/v1/chat", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("a new turn while draining: %v", err)
	}
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	var e struct{ Code string }
	if r.StatusCode != http.StatusServiceUnavailable || json.Unmarshal(b, &e) != nil || e.Code != "shutting_down" {
		t.Errorf("a new turn while draining: %d %s, want 503 shutting_down", r.StatusCode, b)
	}

	// The stream in flight ends normally.
	rest, err := io.ReadAll(events)
	if err != nil {
		t.Fatalf("the stream broke off after SIGTERM: %v\n%s", err, rest)
	}
	if !bytes.Contains(rest, []byte("event: done")) || !bytes.Contains(rest, []byte(`"stored":true`)) {
		t.Errorf("the stream did not finish with a stored turn:\n%s", rest)
	}
	if n := bytes.Count(rest, []byte("event: delta")); n < 20 {
		t.Errorf("only %d deltas after SIGTERM: the turn was not slow enough to test the drain", n)
	}
	if err := p.wait(t, drain+5*time.Second); err != nil {
		t.Errorf("exit: %v\n%s", err, p.log())
	}
	if took := time.Since(sigterm); took > drain {
		t.Errorf("the drain took %v, over DRAIN_TIMEOUT %v", took, drain)
	}
	if !strings.Contains(p.log(), "drained=true") {
		t.Errorf("the log does not report a complete drain:\n%s", p.log())
	}
}

// TestBadEnvironment: a bad value stops the server at startup with a
// message naming the variable.
func TestBadEnvironment(t *testing.T) {
	cmd := exec.Command(build(t))
	cmd.Env = environ("PORT=0", "LISTEN_HOST=127.0.0.1", "LEARNER_TURNS_PER_MINUTE=ten", "REDIS_URL=localhost:6379")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("exit: %v, want status 2\n%s", err, out)
	}
	for _, name := range []string{"LEARNER_TURNS_PER_MINUTE", "REDIS_URL"} {
		if !bytes.Contains(out, []byte(name+": ")) {
			t.Errorf("the message does not name %s:\n%s", name, out)
		}
	}
}
