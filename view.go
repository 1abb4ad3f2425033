package shm

import (
	"reflect"
	"strconv"
	"sync"
	"unsafe"
)

// View returns the value of type T at offset bytes into r's data, in the
// shared memory itself: what one process stores there, the others see.
//
// T must hold no Go pointers, at any depth (no pointer, slice, string, map,
// channel, function, interface or unsafe.Pointer), since the memory is
// outside the Go heap and other processes' addresses mean nothing here; it
// must not be empty; offset must be a multiple of T's alignment; and the
// value must lie within Size(). Otherwise View returns an error matching
// ErrInvalidView. The check of T is made once per type.
//
// The pointer is valid until Close. Plain reads and writes through it are
// not synchronised: guard them with the region's lock, or use atomics
// (sync/atomic functions on its fields, or a Futex). The race detector
// checks no access through it (the memory is outside the Go heap) and
// orders goroutines by the lock and Futex, not by sync/atomic functions on
// the region's memory: see the package documentation.
func View[T any](r *Region, offset int) (*T, error) {
	var zero T
	p, err := view(r, "view", offset, 1, reflect.TypeOf(&zero).Elem(), unsafe.Sizeof(zero), unsafe.Alignof(zero))
	if err != nil {
		return nil, err
	}
	return (*T)(p), nil
}

// Slice returns n values of type T from offset bytes into r's data, in the
// shared memory itself, with the checks of View. For n == 0 it returns an
// empty slice (not nil) when offset lies within the data (offset ==
// Size() included).
func Slice[T any](r *Region, offset, n int) ([]T, error) {
	var zero T
	if n < 0 {
		return nil, r.err("slice", because("negative length "+strconv.Itoa(n), nil, ErrInvalidView))
	}
	p, err := view(r, "slice", offset, n, reflect.TypeOf(&zero).Elem(), unsafe.Sizeof(zero), unsafe.Alignof(zero))
	if err != nil {
		return nil, err
	}
	return unsafe.Slice((*T)(p), n), nil
}

// view checks a view of n values of type t (size, align) at offset and
// returns its address.
func view(r *Region, op string, offset, n int, t reflect.Type, size, align uintptr) (unsafe.Pointer, error) {
	if r.closed.Load() {
		return nil, r.err(op, ErrClosed)
	}
	if why := pointerFree(t); why != "" {
		return nil, r.err(op, because(t.String()+" "+why, nil, ErrInvalidView))
	}
	if size == 0 {
		return nil, r.err(op, because(t.String()+" has size 0", nil, ErrInvalidView))
	}
	if offset < 0 || offset > r.size {
		return nil, r.err(op, because("offset "+strconv.Itoa(offset)+" is outside the region's "+strconv.Itoa(r.size)+" bytes", nil, ErrInvalidView))
	}
	if uintptr(offset)%align != 0 {
		return nil, r.err(op, because("offset "+strconv.Itoa(offset)+" is not a multiple of "+t.String()+"'s alignment, "+strconv.Itoa(int(align)), nil, ErrInvalidView))
	}
	// Divide rather than multiply: n*size may overflow.
	if uint64(n) > uint64(r.size-offset)/uint64(size) {
		return nil, r.err(op, because(strconv.Itoa(n)+" x "+strconv.Itoa(int(size))+" bytes of "+t.String()+
			" at offset "+strconv.Itoa(offset)+" do not fit in the region's "+strconv.Itoa(r.size)+" bytes", nil, ErrInvalidView))
	}
	return unsafe.Add(unsafe.Pointer(unsafe.SliceData(r.data)), offset), nil
}

var pointerFreeCache sync.Map // reflect.Type -> string

// pointerFree returns "" when t holds no Go pointer at any depth, and else
// what holds one.
func pointerFree(t reflect.Type) string {
	if v, ok := pointerFreeCache.Load(t); ok {
		return v.(string)
	}
	why := findPointer(t, "")
	pointerFreeCache.Store(t, why)
	return why
}

func findPointer(t reflect.Type, path string) string {
	at := func() string {
		if path == "" {
			return ""
		}
		return " (" + path + ")"
	}
	switch t.Kind() {
	case reflect.Pointer, reflect.UnsafePointer, reflect.Slice, reflect.String, reflect.Map,
		reflect.Chan, reflect.Func, reflect.Interface:
		return "holds a " + t.Kind().String() + at() + ", which cannot be shared between processes"
	case reflect.Array:
		if t.Len() == 0 {
			return ""
		}
		return findPointer(t.Elem(), path+"[0]")
	case reflect.Struct:
		for i := range t.NumField() {
			f := t.Field(i)
			p := f.Name
			if path != "" {
				p = path + "." + f.Name
			}
			if why := findPointer(f.Type, p); why != "" {
				return why
			}
		}
	}
	return ""
}
