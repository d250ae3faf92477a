// Package browsertest holds the test of the example server's chat page in a
// real headless browser: Debian's chromium, driven by chromedp. It is a
// module of its own so that the library's go.mod does not name chromedp.
package browsertest
