package app

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/chatscale/chatscale/chat"
)

// Authenticator says who the learner of a request is: the one place where
// a host plugs in its own authentication (a session cookie, an OIDC
// access token, a gateway's header). The learner is never taken from the
// request body.
type Authenticator interface {
	// Authenticate returns the learner's ID, or ErrUnauthenticated (or an
	// error wrapping it), answered 401. It may set headers on w (a
	// cookie), never write the body.
	Authenticate(w http.ResponseWriter, r *http.Request) (string, error)
}

// AuthenticatorFunc adapts a function to Authenticator.
type AuthenticatorFunc func(w http.ResponseWriter, r *http.Request) (string, error)

// Authenticate calls f.
func (f AuthenticatorFunc) Authenticate(w http.ResponseWriter, r *http.Request) (string, error) {
	return f(w, r)
}

// ErrUnauthenticated is a request without a valid identity.
var ErrUnauthenticated = errors.New("missing or invalid credentials")

type learnerKey struct{}

// LearnerFrom returns the learner the Authenticator found for the request
// whose context is ctx: the handlers of the routes behind authentication
// (the job routes' among them) read it here.
func LearnerFrom(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(learnerKey{}).(string)
	return id, ok && id != ""
}

func withLearner(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, learnerKey{}, id)
}

// token is the payload of a bearer token.
type token struct {
	Sub string `json:"sub"`
	Exp int64  `json:"exp"`
}

// maxTokenBytes bounds an Authorization header's token.
const maxTokenBytes = 2048

// SignToken returns a bearer token naming userID, valid until now+ttl:
// base64url(JSON {"sub","exp"}) "." base64url(HMAC-SHA256(secret, first
// part)). A host with its own identity provider issues its own tokens and
// replaces HMACAuth; this format is the example's.
func SignToken(secret []byte, userID string, ttl time.Duration, now time.Time) string {
	payload, _ := json.Marshal(token{Sub: userID, Exp: now.Add(ttl).Unix()})
	p := base64.RawURLEncoding.EncodeToString(payload)
	return p + "." + base64.RawURLEncoding.EncodeToString(sign(secret, p))
}

func sign(secret []byte, payload string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(payload))
	return m.Sum(nil)
}

// HMACAuth checks an "Authorization: Bearer <token>" header holding a
// token made by SignToken with secret; now is the clock (nil: time.Now).
func HMACAuth(secret []byte, now func() time.Time) Authenticator {
	if now == nil {
		now = time.Now
	}
	return AuthenticatorFunc(func(_ http.ResponseWriter, r *http.Request) (string, error) {
		h := r.Header.Get("Authorization")
		raw, ok := strings.CutPrefix(h, "Bearer ")
		if !ok || len(raw) > maxTokenBytes {
			return "", ErrUnauthenticated
		}
		p, sig, ok := strings.Cut(strings.TrimSpace(raw), ".")
		if !ok {
			return "", ErrUnauthenticated
		}
		got, err := base64.RawURLEncoding.DecodeString(sig)
		if err != nil || !hmac.Equal(got, sign(secret, p)) {
			return "", ErrUnauthenticated
		}
		payload, err := base64.RawURLEncoding.DecodeString(p)
		if err != nil {
			return "", ErrUnauthenticated
		}
		var t token
		if json.Unmarshal(payload, &t) != nil || t.Sub == "" || len(t.Sub) > chat.MaxIDBytes ||
			!utf8.ValidString(t.Sub) || now().Unix() >= t.Exp {
			return "", ErrUnauthenticated
		}
		return t.Sub, nil
	})
}

// LearnerCookie is the cookie that carries an anonymous learner's ID.
const LearnerCookie = "chatscale_learner"

// anonymousPrefix starts every anonymous learner ID.
const anonymousPrefix = "anon-"

// AnonymousAuth gives a request without identity a fresh random learner
// ID (128 bits, so that one learner cannot guess another's) in a cookie,
// and recognises it afterwards. It is for the offline demo: anyone who
// holds the cookie is that learner.
func AnonymousAuth() Authenticator {
	return AuthenticatorFunc(func(w http.ResponseWriter, r *http.Request) (string, error) {
		if c, err := r.Cookie(LearnerCookie); err == nil && validAnonymous(c.Value) {
			return c.Value, nil
		}
		var b [16]byte
		_, _ = rand.Read(b[:])
		id := anonymousPrefix + hex.EncodeToString(b[:])
		http.SetCookie(w, &http.Cookie{
			Name: LearnerCookie, Value: id, Path: "/", MaxAge: int((30 * 24 * time.Hour).Seconds()),
			HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: r.TLS != nil,
		})
		return id, nil
	})
}

func validAnonymous(v string) bool {
	h, ok := strings.CutPrefix(v, anonymousPrefix)
	if !ok || len(h) != 32 {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil && strings.ToLower(h) == h
}
