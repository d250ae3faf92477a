package browsertest

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/chatscale/chatscale/examples/server/app"
)

// Environment variables of the test.
const (
	// envRequire makes the test fail, not skip, without a browser: CI
	// sets it, so that the test cannot pass by not running.
	envRequire = "CHATSCALE_BROWSER"
	// envScreenshot makes the test write the screenshot the README shows.
	envScreenshot = "CHATSCALE_UPDATE_SCREENSHOT"
)

// screenshot is where the picture of the page goes.
const screenshot = "../../examples/server/testdata/chat.png"

// chromium returns the browser to drive: /usr/bin/chromium (Debian's
// package), else the first of the usual names on PATH; "" when none.
func chromium() string {
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// browser starts a headless browser for the test and returns its context.
func browser(t *testing.T) context.Context {
	t.Helper()
	path := chromium()
	if path == "" {
		if os.Getenv(envRequire) == "1" {
			t.Fatalf("no chromium found (/usr/bin/chromium or on PATH) and %s=1: install it with apt-get install chromium", envRequire)
		}
		t.Skipf("no chromium found (/usr/bin/chromium or on PATH): install it with apt-get install chromium; %s=1 makes this a failure", envRequire)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(900, 820),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	// The first Do starts the browser; it lives as long as ctx.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	return ctx
}

// console collects what the page writes to the console that is an error.
type console struct {
	mu   sync.Mutex
	errs []string
}

func (c *console) watch(ctx context.Context) {
	msgs := chromedp.Console(ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleException {
				c.mu.Lock()
				c.errs = append(c.errs, string(m.Type)+": "+m.Text)
				c.mu.Unlock()
			}
		}
	}()
}

func (c *console) errors() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.errs)
}

// messagesJS lists the conversation on the page as "role: text".
const messagesJS = `[...document.querySelectorAll('#messages li.msg')].map(li => (li.classList.contains('user') ? 'user' : 'assistant') + ': ' + li.querySelector('.text').textContent)`

// page is the browser tab of a test and what its console reported.
type page struct {
	t    *testing.T
	ctx  context.Context
	cons *console
}

// do runs actions, each step bounded by 30 s.
func (p *page) do(name string, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	get(p, name, chromedp.Steps(actions...))
}

// get runs an action that returns a value, bounded by 30 s.
func get[T any](p *page, name string, a chromedp.Action[T]) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		p.t.Fatalf("%s: %v (console errors: %q)", name, err, p.cons.errors())
	}
	return v
}

// messages returns the conversation shown.
func (p *page) messages() []string {
	p.t.Helper()
	return get(p, "read the messages", chromedp.Evaluate[[]string](messagesJS))
}

// ready waits until the page has started and shown the history.
var ready = chromedp.Poll[chromedp.Void](`document.body.dataset.ready === 'true' && document.body.dataset.history === 'loaded'`)

// ask types a question, checks that the reply streams in (a part of it
// is shown before the whole), and returns the reply.
func (p *page) ask(question string) string {
	p.t.Helper()
	n := len(p.messages())
	p.do("ask "+question, chromedp.SendKeys("#question", question), chromedp.Click("#send"))
	partial := get(p, "a partial reply", chromedp.Poll[string](`(() => {
		const li = document.querySelector('#messages li.msg.assistant.streaming');
		const text = li && li.querySelector('.text').textContent;
		return text && text.includes(' ') ? text : false;
	})()`, chromedp.WithPollingMutation()))
	final := get(p, "the whole reply", chromedp.Poll[string](fmt.Sprintf(`(() => {
		const li = document.querySelectorAll('#messages li.msg')[%d];
		return li && li.dataset.done === 'true' && !li.classList.contains('streaming') && li.querySelector('.text').textContent;
	})()`, n+1)))
	if !strings.HasPrefix(final, partial) || len(partial) >= len(final) {
		p.t.Errorf("partial reply %q is not a beginning of the reply %q: the reply did not stream", partial, final)
	}
	return final
}

// TestChatPage drives the chat page served by the example server with no
// configuration: type a question, watch the reply stream in, reload and
// find the conversation again.
func TestChatPage(t *testing.T) {
	ctx := browser(t)
	a, err := app.New(t.Context(), app.Config{OfflineDelay: 25 * time.Millisecond}, app.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(func() {
		srv.Close()
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = a.Close(cctx)
	})
	p := &page{t: t, ctx: ctx, cons: &console{}}
	p.cons.watch(ctx)

	p.do("open the page", chromedp.Navigate(srv.URL), ready)
	if got := p.messages(); len(got) != 0 {
		t.Fatalf("a new learner's page shows %q", got)
	}
	if video := get(p, "the selected video", chromedp.Evaluate[string](`document.querySelector('#video option:checked').textContent`)); !strings.Contains(video, "demo-course / intro") {
		t.Errorf("the page starts on %q, want the demo course's intro", video)
	}

	reply := p.ask("What are goroutines?")
	if !strings.Contains(reply, "Goroutines are functions") {
		t.Errorf("reply %q does not answer from the transcript", reply)
	}
	want := []string{"user: What are goroutines?", "assistant: " + reply}
	if got := p.messages(); !slices.Equal(got, want) {
		t.Errorf("page shows %q, want %q", got, want)
	}

	p.do("reload", chromedp.Reload(), ready)
	if got := p.messages(); !slices.Equal(got, want) {
		t.Errorf("after a reload the page shows %q, want the history %q", got, want)
	}

	reply2 := p.ask("How do channels work?")
	want = append(want, "user: How do channels work?", "assistant: "+reply2)
	if got := p.messages(); !slices.Equal(got, want) {
		t.Errorf("page shows %q, want %q", got, want)
	}
	if errs := p.cons.errors(); len(errs) > 0 {
		t.Errorf("the page logged errors: %q", errs)
	}

	if os.Getenv(envScreenshot) == "1" {
		png := get(p, "screenshot", chromedp.CaptureScreenshot())
		if err := os.MkdirAll(filepath.Dir(screenshot), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(screenshot, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d bytes)", screenshot, len(png))
	}
}

// TestChatPageDegraded: with the model down, the page shows the fallback
// reply and a notice saying why.
func TestChatPageDegraded(t *testing.T) {
	ctx := browser(t)
	a, err := app.New(t.Context(), app.Config{OfflineDown: true}, app.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(func() {
		srv.Close()
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = a.Close(cctx)
	})
	p := &page{t: t, ctx: ctx, cons: &console{}}
	p.cons.watch(ctx)
	p.do("open the page", chromedp.Navigate(srv.URL), ready)
	p.do("ask", chromedp.SendKeys("#question", "Anyone there?"), chromedp.Click("#send"))
	notice := get(p, "the degraded notice", chromedp.Poll[string](`(() => {
		const n = document.getElementById('notice');
		return !n.hidden && n.classList.contains('warn') && n.textContent;
	})()`))
	if !strings.Contains(notice, "Degraded answer") || !strings.Contains(notice, "stand-in reply") {
		t.Errorf("notice %q does not say the reply is a stand-in", notice)
	}
	if got := get(p, "the reply's class", chromedp.Evaluate[string](`document.querySelector('#messages li.msg.assistant').className`)); !strings.Contains(got, "degraded") {
		t.Errorf("the reply is not marked degraded: class %q", got)
	}
	// The fallback exchange is not kept: a reload shows no history.
	p.do("reload", chromedp.Reload(), ready)
	if got := p.messages(); len(got) != 0 {
		t.Errorf("after a reload the page shows %q; a fallback exchange is not stored", got)
	}
}
