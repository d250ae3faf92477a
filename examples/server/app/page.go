package app

import (
	"embed"
	"io/fs"
	"net/http"
)

// static holds the chat page: plain HTML, CSS and JavaScript, no build
// step, nothing fetched from elsewhere.
//
//go:embed static
var static embed.FS

// pageConfig is what the chat page learns before its first question.
type pageConfig struct {
	// Auth is "anonymous" (a cookie, nothing to do), "bearer" (the page
	// asks for a token) or "custom".
	Auth string `json:"auth"`
	// OfflineModel reports that the built-in offline model answers.
	OfflineModel bool `json:"offline_model"`
	// Videos are the sample videos; empty with MongoDB, when the learner
	// types a course ID and a video URL.
	Videos []Video `json:"videos"`
}

// pageRoutes registers the page, its files and its configuration.
func (a *App) pageRoutes(mux *http.ServeMux) {
	files, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the directory is embedded: it exists
	}
	mux.Handle("GET /{$}", pageHeaders(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, files, "index.html")
	})))
	mux.Handle("GET /static/", pageHeaders(http.StripPrefix("/static/", http.FileServerFS(files))))
	mux.HandleFunc("GET /v1/config", func(w http.ResponseWriter, r *http.Request) {
		videos := a.catalog
		if videos == nil {
			videos = []Video{}
		}
		writeJSON(w, http.StatusOK, pageConfig{Auth: a.authTag, OfflineModel: a.offline, Videos: videos})
	})
}

// pageHeaders sets the headers of the page's files: nothing but this
// origin may supply scripts, styles or connections, and no other site
// may frame the page.
func pageHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		next.ServeHTTP(w, r)
	})
}
