package ids_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/contextcache/internal/ids"
)

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		course, video, field, reason string
	}{
		{"", "v", "CourseID", "empty"},
		{"c", "", "VideoURL", "empty"},
		{"c\x00", "v", "CourseID", "contains a control character"},
		{"c", "v\n", "VideoURL", "contains a control character"},
		{"c", "v\x7f", "VideoURL", "contains a control character"},
		{"\xff", "v", "CourseID", "not valid UTF-8"},
		{"c", strings.Repeat("x", ids.MaxLen+1), "VideoURL", "longer than 2048 bytes"},
	} {
		err := ids.Check("pkg", tc.course, tc.video)
		var ie *chatscale.InputError
		if !errors.Is(err, chatscale.ErrInvalidInput) || !errors.As(err, &ie) ||
			ie.Package != "pkg" || ie.Field != tc.field || ie.Reason != tc.reason {
			t.Errorf("Check(%q, %q) = %#v; want an InputError on %s: %s", tc.course, tc.video, err, tc.field, tc.reason)
		}
	}
	for _, k := range [][2]string{{"c", "v"}, {"a:{b}", "https://x/y?z={1}"}, {"é", strings.Repeat("x", ids.MaxLen)}} {
		if err := ids.Check("pkg", k[0], k[1]); err != nil {
			t.Errorf("Check(%q, %q) = %v; want nil", k[0], k[1], err)
		}
	}
}
