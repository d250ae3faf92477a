// Package ids holds the one check of the IDs that name a transcript, shared
// by contextcache and its Sources.
package ids

import (
	"strconv"
	"unicode/utf8"

	"github.com/chatscale/chatscale"
)

// MaxLen is the longest course ID or video URL accepted, in bytes.
const MaxLen = 2048

// Check returns a *chatscale.InputError of package pkg, on the field
// "CourseID" or "VideoURL", when courseID or videoURL cannot name a
// transcript: empty, longer than MaxLen bytes, not valid UTF-8, or holding
// an ASCII control character. It returns nil otherwise.
func Check(pkg, courseID, videoURL string) error {
	if r := reason(courseID); r != "" {
		return &chatscale.InputError{Package: pkg, Field: "CourseID", Reason: r}
	}
	if r := reason(videoURL); r != "" {
		return &chatscale.InputError{Package: pkg, Field: "VideoURL", Reason: r}
	}
	return nil
}

func reason(v string) string {
	switch {
	case v == "":
		return "empty"
	case len(v) > MaxLen:
		return "longer than " + strconv.Itoa(MaxLen) + " bytes"
	case !utf8.ValidString(v):
		return "not valid UTF-8"
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] == 0x7f {
			return "contains a control character"
		}
	}
	return ""
}
