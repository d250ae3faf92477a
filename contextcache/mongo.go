package contextcache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// CourseIDKind says how course IDs are stored in MongoDB.
type CourseIDKind uint8

// The kinds of course ID a MongoSource can query.
const (
	// CourseIDObjectID stores course IDs as ObjectIDs; callers pass their
	// 24-digit hex form. It is the default.
	CourseIDObjectID CourseIDKind = iota
	// CourseIDString stores course IDs as strings, passed through as is.
	CourseIDString
)

// MongoConfig tunes a MongoSource. Field names may use dots to reach into
// embedded documents.
type MongoConfig struct {
	// CourseIDField holds the course ID. Default: "courseId".
	CourseIDField string
	// CourseID says how course IDs are stored. Default: CourseIDObjectID.
	CourseID CourseIDKind
	// VideoURLField holds the video URL. Default: "videoUrl".
	VideoURLField string
	// TextField holds the full transcript, a string. Default: "transcript".
	// When a document has no such field, Text joins the segments' texts.
	TextField string
	// SegmentsField holds the timed segments: an array of documents with
	// numeric start and end offsets and a string text. Default: "segments".
	SegmentsField string
	// TitleField holds the video title. Default: "title".
	TitleField string
	// UpdatedAtField holds the time of the last change, a BSON date.
	// Default: "updatedAt".
	UpdatedAtField string
	// SegmentStartField, SegmentEndField and SegmentTextField name the
	// fields of a segment. Defaults: "start", "end", "text".
	SegmentStartField, SegmentEndField, SegmentTextField string
	// SegmentUnit is the unit of the segments' numeric offsets.
	// Default: time.Second (zero).
	SegmentUnit time.Duration
	// Timeout bounds one query, on top of the caller's context.
	// Default: 5 s (zero). Negative means no bound besides the context.
	Timeout time.Duration
}

// MongoSource loads transcripts from a MongoDB collection with one
// FindOne per call, projected to the fields it reads. It is a Source and
// is safe for concurrent use.
type MongoSource struct {
	coll       *mongo.Collection
	cfg        MongoConfig
	projection bson.D
}

// NewMongo returns a MongoSource reading coll. It does not take ownership
// of coll's client; callers disconnect it. It returns an error wrapping
// ErrInvalidConfig for a nil coll or impossible Config values.
func NewMongo(coll *mongo.Collection, cfg MongoConfig) (*MongoSource, error) {
	if coll == nil {
		return nil, fmt.Errorf("%w: nil collection", ErrInvalidConfig)
	}
	def := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	def(&cfg.CourseIDField, "courseId")
	def(&cfg.VideoURLField, "videoUrl")
	def(&cfg.TextField, "transcript")
	def(&cfg.SegmentsField, "segments")
	def(&cfg.TitleField, "title")
	def(&cfg.UpdatedAtField, "updatedAt")
	def(&cfg.SegmentStartField, "start")
	def(&cfg.SegmentEndField, "end")
	def(&cfg.SegmentTextField, "text")
	if cfg.SegmentUnit == 0 {
		cfg.SegmentUnit = time.Second
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.SegmentUnit < 0 {
		return nil, fmt.Errorf("%w: negative SegmentUnit", ErrInvalidConfig)
	}
	if cfg.CourseID > CourseIDString {
		return nil, fmt.Errorf("%w: unknown CourseIDKind %d", ErrInvalidConfig, cfg.CourseID)
	}
	s := &MongoSource{coll: coll, cfg: cfg}
	s.projection = bson.D{{Key: "_id", Value: 0}}
	for _, f := range []string{cfg.TitleField, cfg.TextField, cfg.SegmentsField, cfg.UpdatedAtField} {
		s.projection = append(s.projection, bson.E{Key: f, Value: 1})
	}
	return s, nil
}

// Load returns the transcript of videoURL in courseID. It returns a
// *KeyError, without querying, when courseID is not an ObjectID's hex form
// and CourseIDObjectID is configured or when an ID is empty; an error
// wrapping ErrNotFound when no document matches; and the driver's error,
// wrapped, when the query fails.
func (s *MongoSource) Load(ctx context.Context, courseID, videoURL string) (Document, error) {
	if err := checkKey(courseID, videoURL); err != nil {
		return Document{}, err
	}
	var course any = courseID
	if s.cfg.CourseID == CourseIDObjectID {
		oid, err := bson.ObjectIDFromHex(courseID)
		if err != nil {
			return Document{}, &KeyError{Field: "courseID", Value: courseID, Reason: "not an ObjectID in hex"}
		}
		course = oid
	}
	if s.cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.Timeout)
		defer cancel()
	}
	filter := bson.D{{Key: s.cfg.CourseIDField, Value: course}, {Key: s.cfg.VideoURLField, Value: videoURL}}
	raw, err := s.coll.FindOne(ctx, filter, options.FindOne().SetProjection(s.projection)).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return Document{}, fmt.Errorf("%w: course %q video %q", ErrNotFound, courseID, videoURL)
	}
	if err != nil {
		return Document{}, fmt.Errorf("contextcache: mongo find: %w", err)
	}
	d, err := s.decode(raw)
	if err != nil {
		return Document{}, fmt.Errorf("contextcache: mongo document for course %q video %q: %w", courseID, videoURL, err)
	}
	d.CourseID, d.VideoURL = courseID, videoURL
	return d, nil
}

func (s *MongoSource) decode(raw bson.Raw) (Document, error) {
	var d Document
	if v, err := raw.LookupErr(strings.Split(s.cfg.TitleField, ".")...); err == nil {
		t, ok := v.StringValueOK()
		if !ok && v.Type != bson.TypeNull {
			return d, fmt.Errorf("field %s is %s, not a string", s.cfg.TitleField, v.Type)
		}
		d.Title = t
	}
	if v, err := raw.LookupErr(strings.Split(s.cfg.UpdatedAtField, ".")...); err == nil {
		if dt, ok := v.DateTimeOK(); ok {
			d.UpdatedAt = time.UnixMilli(dt)
		} else if v.Type != bson.TypeNull {
			return d, fmt.Errorf("field %s is %s, not a date", s.cfg.UpdatedAtField, v.Type)
		}
	}
	if v, err := raw.LookupErr(strings.Split(s.cfg.SegmentsField, ".")...); err == nil && v.Type != bson.TypeNull {
		arr, ok := v.ArrayOK()
		if !ok {
			return d, fmt.Errorf("field %s is %s, not an array", s.cfg.SegmentsField, v.Type)
		}
		vals, err := arr.Values()
		if err != nil {
			return d, err
		}
		d.Segments = make([]Segment, 0, len(vals))
		for i, sv := range vals {
			sd, ok := sv.DocumentOK()
			if !ok {
				return d, fmt.Errorf("segment %d is %s, not a document", i, sv.Type)
			}
			var seg Segment
			if seg.Start, err = s.offset(sd, s.cfg.SegmentStartField); err != nil {
				return d, fmt.Errorf("segment %d: %w", i, err)
			}
			if seg.End, err = s.offset(sd, s.cfg.SegmentEndField); err != nil {
				return d, fmt.Errorf("segment %d: %w", i, err)
			}
			if tv, err := sd.LookupErr(s.cfg.SegmentTextField); err == nil {
				if seg.Text, ok = tv.StringValueOK(); !ok {
					return d, fmt.Errorf("segment %d: %s is %s, not a string", i, s.cfg.SegmentTextField, tv.Type)
				}
			}
			d.Segments = append(d.Segments, seg)
		}
	}
	v, err := raw.LookupErr(strings.Split(s.cfg.TextField, ".")...)
	switch {
	case err == nil && v.Type != bson.TypeNull:
		t, ok := v.StringValueOK()
		if !ok {
			return d, fmt.Errorf("field %s is %s, not a string", s.cfg.TextField, v.Type)
		}
		d.Text = t
	case len(d.Segments) > 0:
		var b strings.Builder
		for i, seg := range d.Segments {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(seg.Text)
		}
		d.Text = b.String()
	}
	return d, nil
}

func (s *MongoSource) offset(seg bson.Raw, field string) (time.Duration, error) {
	v, err := seg.LookupErr(field)
	if err != nil {
		return 0, nil
	}
	var f float64
	switch v.Type {
	case bson.TypeDouble:
		f = v.Double()
	case bson.TypeInt32:
		f = float64(v.Int32())
	case bson.TypeInt64:
		f = float64(v.Int64())
	case bson.TypeNull:
		return 0, nil
	default:
		return 0, fmt.Errorf("%s is %s, not a number", field, v.Type)
	}
	return time.Duration(f * float64(s.cfg.SegmentUnit)), nil
}

// EnsureIndexes creates the indexes Load relies on, {courseId: 1,
// videoUrl: 1} and {courseId: 1} (with the configured field names). It is
// idempotent. It sends one createIndexes command per index: FerretDB 1.x
// drops the connection on a batch that repeats existing indexes.
func (s *MongoSource) EnsureIndexes(ctx context.Context) error {
	for _, keys := range []bson.D{
		{{Key: s.cfg.CourseIDField, Value: 1}, {Key: s.cfg.VideoURLField, Value: 1}},
		{{Key: s.cfg.CourseIDField, Value: 1}},
	} {
		if _, err := s.coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: keys}); err != nil {
			return fmt.Errorf("contextcache: creating index %v: %w", keys, err)
		}
	}
	return nil
}

// Client option defaults of ClientOptions.
const (
	DefaultMongoMaxPoolSize            = 50
	DefaultMongoServerSelectionTimeout = 5 * time.Second
	DefaultMongoTimeout                = 10 * time.Second
)

// ClientOptions returns driver options for uri with chatscale's pool
// defaults: at most 50 connections, 5 s to select a server and 10 s per
// operation. Options given in uri win over these defaults. Pass the result
// to mongo.Connect.
func ClientOptions(uri string) *options.ClientOptions {
	return options.Client().
		SetMaxPoolSize(DefaultMongoMaxPoolSize).
		SetServerSelectionTimeout(DefaultMongoServerSelectionTimeout).
		SetTimeout(DefaultMongoTimeout).
		ApplyURI(uri)
}
