package contextcache

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// The encoded transcript of an L2 value (after the freshness prefix, see
// withFreshness). Byte 0 is the format version, byte 1 the kind,
// byte 2 the flags; the body follows. With flagDeflate set, the body is the
// length of the plain body (uvarint) and the plain body deflated. The plain
// body of a document is course, video, title, text (each a uvarint length
// and the bytes), updated-at (varint Unix nanoseconds, 0 for the zero
// time), the number of segments (uvarint), and for each segment its start
// and end (varint nanoseconds) and text. The body of a not-found marker is
// course and video.
const (
	codecVersion = 1

	kindDocument = 'D'
	kindNotFound = 'N'

	flagDeflate = 1

	headerLen = 3

	// maxDecoded bounds what a deflated value may expand to.
	maxDecoded = 64 << 20
)

var errCorrupt = errors.New("contextcache: corrupt L2 value")

var (
	deflaters = sync.Pool{New: func() any {
		w, _ := flate.NewWriter(nil, flate.BestSpeed)
		return w
	}}
	inflaters = sync.Pool{New: func() any { return flate.NewReader(nil) }}
)

// encodeDocument returns the L2 form of d, deflated when its body is
// longer than compressAbove bytes (never when compressAbove < 0).
func encodeDocument(d *Document, compressAbove int) []byte {
	n := headerLen + 5*binary.MaxVarintLen64 + len(d.CourseID) + len(d.VideoURL) + len(d.Title) + len(d.Text)
	for i := range d.Segments {
		n += 3*binary.MaxVarintLen64 + len(d.Segments[i].Text)
	}
	b := make([]byte, headerLen, n)
	b[0], b[1] = codecVersion, kindDocument
	b = appendString(b, d.CourseID)
	b = appendString(b, d.VideoURL)
	b = appendString(b, d.Title)
	b = appendString(b, d.Text)
	var updated int64
	if !d.UpdatedAt.IsZero() {
		updated = d.UpdatedAt.UnixNano()
	}
	b = binary.AppendVarint(b, updated)
	b = binary.AppendUvarint(b, uint64(len(d.Segments)))
	for _, s := range d.Segments {
		b = binary.AppendVarint(b, int64(s.Start))
		b = binary.AppendVarint(b, int64(s.End))
		b = appendString(b, s.Text)
	}
	if compressAbove < 0 || len(b)-headerLen <= compressAbove {
		return b
	}
	var out bytes.Buffer
	out.Grow(len(b) / 2)
	out.Write([]byte{b[0], b[1], flagDeflate})
	out.Write(binary.AppendUvarint(nil, uint64(len(b)-headerLen)))
	w := deflaters.Get().(*flate.Writer)
	w.Reset(&out)
	_, _ = w.Write(b[headerLen:]) // writes to a bytes.Buffer do not fail
	_ = w.Close()
	deflaters.Put(w)
	if out.Len() >= len(b) {
		return b // incompressible
	}
	return out.Bytes()
}

// encodeNotFound returns the L2 form of a not-found marker.
func encodeNotFound(courseID, videoURL string) []byte {
	b := make([]byte, headerLen, headerLen+2*binary.MaxVarintLen64+len(courseID)+len(videoURL))
	b[0], b[1] = codecVersion, kindNotFound
	b = appendString(b, courseID)
	return appendString(b, videoURL)
}

// decode parses an L2 value. found is false for a not-found marker. The
// course and video stored in the value must equal the ones asked for, so
// that a hash collision of two keys reads as corrupt rather than as the
// other video. The strings of the Document share the memory of v (or of
// the one buffer v inflates to): decoding allocates little.
func decode(v string, courseID, videoURL string) (d Document, found bool, err error) {
	if len(v) < headerLen || v[0] != codecVersion {
		return Document{}, false, errCorrupt
	}
	kind, flags := v[1], v[2]
	r := reader{s: v[headerLen:]}
	if flags&flagDeflate != 0 {
		n := r.uvarint()
		if r.bad || n > maxDecoded {
			return Document{}, false, errCorrupt
		}
		buf := make([]byte, n)
		zr := inflaters.Get().(io.ReadCloser)
		_ = zr.(flate.Resetter).Reset(strings.NewReader(r.s[r.off:]), nil)
		_, err := io.ReadFull(zr, buf)
		inflaters.Put(zr)
		if err != nil {
			return Document{}, false, errCorrupt
		}
		// buf is never written again: the strings can share it.
		r = reader{s: unsafe.String(unsafe.SliceData(buf), len(buf))}
	}
	d.CourseID = r.string()
	d.VideoURL = r.string()
	if r.bad || d.CourseID != courseID || d.VideoURL != videoURL {
		return Document{}, false, errCorrupt
	}
	switch kind {
	case kindNotFound:
		if r.off != len(r.s) {
			return Document{}, false, errCorrupt
		}
		return Document{}, false, nil
	case kindDocument:
	default:
		return Document{}, false, errCorrupt
	}
	d.Title = r.string()
	d.Text = r.string()
	if u := r.varint(); u != 0 {
		d.UpdatedAt = time.Unix(0, u)
	}
	n := r.uvarint()
	if n > uint64(len(r.s)-r.off) { // every segment takes at least 3 bytes
		return Document{}, false, errCorrupt
	}
	if n > 0 {
		d.Segments = make([]Segment, n)
		for i := range d.Segments {
			d.Segments[i].Start = time.Duration(r.varint())
			d.Segments[i].End = time.Duration(r.varint())
			d.Segments[i].Text = r.string()
		}
	}
	if r.bad || r.off != len(r.s) {
		return Document{}, false, errCorrupt
	}
	return d, true, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// reader reads the fields of an L2 body; bad is set at the first error
// and every later read returns a zero value.
type reader struct {
	s   string
	off int
	bad bool
}

// uvarint decodes as binary.Uvarint does, from a string.
func (r *reader) uvarint() uint64 {
	var x uint64
	var shift uint
	for i := 0; i < binary.MaxVarintLen64 && !r.bad; i++ {
		if r.off >= len(r.s) {
			break
		}
		b := r.s[r.off]
		r.off++
		if b < 0x80 {
			if i == binary.MaxVarintLen64-1 && b > 1 {
				break // overflow
			}
			return x | uint64(b)<<shift
		}
		x |= uint64(b&0x7f) << shift
		shift += 7
	}
	r.bad = true
	return 0
}

// varint decodes as binary.Varint does, from a string.
func (r *reader) varint() int64 {
	ux := r.uvarint()
	x := int64(ux >> 1)
	if ux&1 != 0 {
		x = ^x
	}
	return x
}

func (r *reader) string() string {
	n := r.uvarint()
	if r.bad || n > uint64(len(r.s)-r.off) {
		r.bad = true
		return ""
	}
	s := r.s[r.off : r.off+int(n)]
	r.off += int(n)
	return s
}

// freshLen is the length of the prefix of an L2 value that says until when
// it is fresh: a Unix millisecond in zero-padded decimal, which
// get_or_lock.lua reads with tonumber.
const freshLen = 16

// withFreshness returns enc prefixed with freshUntil (Unix milliseconds).
func withFreshness(freshUntil int64, enc []byte) []byte {
	b := make([]byte, freshLen, freshLen+len(enc))
	ms := strconv.AppendInt(nil, min(max(0, freshUntil), 1e16-1), 10)
	for i := range freshLen - len(ms) {
		b[i] = '0'
	}
	copy(b[freshLen-len(ms):], ms)
	return append(b, enc...)
}

// splitFreshness returns the freshness (Unix milliseconds) and the encoded
// transcript of an L2 value.
func splitFreshness(v string) (freshUntil int64, enc string, err error) {
	if len(v) < freshLen {
		return 0, "", errCorrupt
	}
	freshUntil, perr := strconv.ParseInt(v[:freshLen], 10, 64)
	if perr != nil || freshUntil < 0 || freshUntil > math.MaxInt64/int64(time.Millisecond) {
		return 0, "", errCorrupt
	}
	return freshUntil, v[freshLen:], nil
}
