package contextcache

import (
	"context"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

func sampleDoc(textLen int) Document {
	return Document{
		CourseID: "c1", VideoURL: "https://v/1", Title: "Title",
		Text: strings.Repeat("transcript words ", textLen/17+1)[:textLen],
		Segments: []Segment{
			{Start: 0, End: 1500 * time.Millisecond, Text: "Hello"},
			{Start: 1500 * time.Millisecond, End: 3 * time.Second, Text: "world"},
		},
		UpdatedAt: time.Unix(1_770_000_000, 123),
	}
}

func TestCodecRoundTrip(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 100, 50_000} {
		d := sampleDoc(n)
		v := encodeDocument(&d, DefaultCompressAbove)
		compressed := v[2]&flagDeflate != 0
		if n == 50_000 && (!compressed || len(v) > n/4) {
			t.Errorf("%d-byte text: value of %d bytes, compressed %v; want it deflated", n, len(v), compressed)
		}
		if n == 100 && compressed {
			t.Errorf("%d-byte text deflated; want it plain", n)
		}
		got, found, err := decode(string(v), d.CourseID, d.VideoURL)
		if err != nil || !found {
			t.Fatalf("decode(%d): found %v, %v", n, found, err)
		}
		if !got.UpdatedAt.Equal(d.UpdatedAt) {
			t.Fatalf("UpdatedAt %v; want %v", got.UpdatedAt, d.UpdatedAt)
		}
		got.UpdatedAt = d.UpdatedAt
		if !reflect.DeepEqual(got, d) {
			t.Fatalf("decode(encode(d)) = %+v; want %+v", got, d)
		}
	}
	zero := Document{CourseID: "c", VideoURL: "v"}
	got, found, err := decode(string(encodeDocument(&zero, -1)), "c", "v")
	if err != nil || !found || !reflect.DeepEqual(got, zero) {
		t.Fatalf("zero document: %+v, %v, %v", got, found, err)
	}
	if _, found, err := decode(string(encodeNotFound("c", "v")), "c", "v"); err != nil || found {
		t.Fatalf("not-found marker: found %v, %v", found, err)
	}
}

func TestCodecRejectsOtherKeyAndDamage(t *testing.T) {
	t.Parallel()
	d := sampleDoc(100)
	v := encodeDocument(&d, -1)
	if _, _, err := decode(string(v), "c1", "https://v/2"); err != errCorrupt {
		t.Fatalf("decode for another video: %v; want errCorrupt", err)
	}
	for i := range v {
		if _, _, err := decode(string(v[:i]), d.CourseID, d.VideoURL); err == nil {
			t.Fatalf("decode of the first %d of %d bytes succeeded", i, len(v))
		}
	}
	big := sampleDoc(20_000)
	zv := encodeDocument(&big, 0)
	for i := headerLen; i < len(zv); i += 7 {
		b := append([]byte(nil), zv...)
		b[i] ^= 0x5a
		_, _, _ = decode(string(b), big.CourseID, big.VideoURL) // must not panic
	}
}

func FuzzDecode(f *testing.F) {
	d := sampleDoc(3000)
	f.Add(encodeDocument(&d, -1))
	f.Add(encodeDocument(&d, 0))
	f.Add(encodeNotFound("c1", "https://v/1"))
	f.Fuzz(func(t *testing.T, v []byte) {
		got, found, err := decode(string(v), "c1", "https://v/1")
		if err != nil || !found {
			return
		}
		again, _, err := decode(string(encodeDocument(&got, -1)), "c1", "https://v/1")
		if err != nil || len(again.Segments) != len(got.Segments) || again.Text != got.Text {
			t.Fatalf("re-encoding a decoded value changed it: %v", err)
		}
	})
}

func TestInvalidationMessageRoundTrip(t *testing.T) {
	t.Parallel()
	for _, k := range []key{{"c", "v"}, {"a:{b}", "https://x/y?z=1"}, {strings.Repeat("c", 300), "v"}} {
		got, ok := decodeInvalidation(string(encodeInvalidation(k)))
		if !ok || got != k {
			t.Fatalf("round trip of %+v = %+v, %v", k, got, ok)
		}
	}
	for _, p := range []string{"", "x", "\x01", "\x01\x05ab", "\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"} {
		if _, ok := decodeInvalidation(p); ok {
			t.Errorf("decodeInvalidation(%q) accepted a damaged message", p)
		}
	}
}

func TestRedisKeysShareHashTagAndDifferPerVideo(t *testing.T) {
	t.Parallel()
	c, err := New(SourceFunc(func(context.Context, string, string) (Document, error) { return Document{}, nil }),
		Config{Prefix: "p:"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	v1, l1 := c.redisKeys(key{"c", "v1"})
	v2, _ := c.redisKeys(key{"c", "v2"})
	tag := func(s string) string { return s[strings.Index(s, "{") : strings.Index(s, "}")+1] }
	if !strings.HasPrefix(v1, "p:contextcache:{") || !strings.HasSuffix(v1, "}:doc") || !strings.HasSuffix(l1, "}:lock") ||
		tag(v1) != tag(l1) || v1 == l1 {
		t.Fatalf("value %q and lock %q: want p:contextcache:{tag}:doc and :lock, one hash tag", v1, l1)
	}
	if tag(v1) == tag(v2) {
		t.Fatalf("two videos share hash tag %s", tag(v1))
	}
	// Length-prefixing keeps ("ab","c") and ("a","bc") apart.
	x, _ := c.redisKeys(key{"ab", "c"})
	y, _ := c.redisKeys(key{"a", "bc"})
	if x == y {
		t.Fatal(`("ab","c") and ("a","bc") share a key`)
	}
}

func TestFreshnessPrefix(t *testing.T) {
	t.Parallel()
	for _, ms := range []int64{0, 1, 1_772_000_000_123, math.MaxInt64 / int64(time.Millisecond)} {
		v := withFreshness(ms, []byte("body"))
		if len(v) != freshLen+4 {
			t.Fatalf("withFreshness(%d) = %q; want %d digits and the body", ms, v, freshLen)
		}
		got, enc, err := splitFreshness(string(v))
		if err != nil || got != ms || enc != "body" {
			t.Fatalf("splitFreshness(withFreshness(%d)) = %d, %q, %v", ms, got, enc, err)
		}
	}
	if v := withFreshness(-5, nil); string(v) != "0000000000000000" {
		t.Fatalf("withFreshness(-5) = %q; want zeros", v)
	}
	for _, v := range []string{"", "123", "00000000000000x0body", "9999999999999999body", "-000000000000001body"} {
		if _, _, err := splitFreshness(v); err != errCorrupt {
			t.Errorf("splitFreshness(%q) = %v; want errCorrupt", v, err)
		}
	}
}
