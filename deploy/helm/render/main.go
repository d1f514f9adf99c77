// go run (GOPATH mode, Debian's Go packages): see deploy/helm/README.md, "How the chart is tested here".
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o render deploy/helm/render/main.go
//	render CHART_DIR [-f VALUES.yaml]... [--set a.b.c=VALUE]... [--name RELEASE] [--namespace NS] [--api-versions G/V]...
//
// A stand-in for `helm template`, for machines without Helm: it renders a chart with the same engine Helm uses
// (Go's text/template and Masterminds' sprig functions) and the part of Helm's own layer this chart needs:
// values.yaml merged with -f files and --set, values checked against values.schema.json (xeipuuv/gojsonschema,
// as Helm 3 does), `.Values .Release .Chart .Capabilities .Template`, include, tpl, required, toYaml, fromYaml,
// toJson, lookup (always empty: there is no cluster), and one YAML document per object on stdout, each headed
// `# Source: CHART/templates/FILE` as Helm prints them. NOTES.txt is rendered too (checked, printed with --notes).
// Not here: subcharts, hooks, Files, .Capabilities beyond the versions listed, --set list indices.
// Exit status 1 with a message on stderr for a schema violation, a template error or a document that is not YAML.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"github.com/xeipuuv/gojsonschema"
	"gopkg.in/yaml.v2"
)

type options struct {
	chartDir, release, namespace  string
	valueFiles, sets, apiVersions []string
	notes                         bool
}

func main() {
	opts, err := parseArgs(os.Args[1:])
	if err == nil {
		err = run(opts)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func parseArgs(args []string) (options, error) {
	o := options{release: "meshtrain", namespace: "default"}
	for i := 0; i < len(args); i++ {
		flagWithValue := func() (string, error) {
			if i+1 >= len(args) {
				return "", fmt.Errorf("%s needs a value", args[i])
			}
			i++
			return args[i], nil
		}
		var v string
		var err error
		switch a := args[i]; a {
		case "-f", "--values":
			v, err = flagWithValue()
			o.valueFiles = append(o.valueFiles, v)
		case "--set":
			v, err = flagWithValue()
			o.sets = append(o.sets, v)
		case "--name":
			o.release, err = flagWithValue()
		case "--namespace", "-n":
			o.namespace, err = flagWithValue()
		case "--api-versions":
			v, err = flagWithValue()
			o.apiVersions = append(o.apiVersions, v)
		case "--notes":
			o.notes = true
		default:
			if strings.HasPrefix(a, "-") || o.chartDir != "" {
				return o, fmt.Errorf("unknown argument %q", a)
			}
			o.chartDir = a
		}
		if err != nil {
			return o, err
		}
	}
	if o.chartDir == "" {
		return o, fmt.Errorf("usage: render CHART_DIR [-f VALUES]... [--set K=V]... [--name R] [--namespace NS] [--api-versions G/V]... [--notes]")
	}
	return o, nil
}

func run(o options) error {
	chart, err := readYAMLFile(filepath.Join(o.chartDir, "Chart.yaml"))
	if err != nil {
		return err
	}
	values, err := readYAMLFile(filepath.Join(o.chartDir, "values.yaml"))
	if err != nil {
		return err
	}
	for _, f := range o.valueFiles {
		override, err := readYAMLFile(f)
		if err != nil {
			return err
		}
		values = coalesce(values, override)
	}
	for _, s := range o.sets {
		if err := applySet(values, s); err != nil {
			return err
		}
	}
	if err := checkSchema(filepath.Join(o.chartDir, "values.schema.json"), chart["name"], values); err != nil {
		return err
	}
	top := map[string]interface{}{
		"Values":  values,
		"Release": map[string]interface{}{"Name": o.release, "Namespace": o.namespace, "Service": "Helm", "IsInstall": true, "IsUpgrade": false, "Revision": 1},
		"Chart": map[string]interface{}{"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"],
			"Description": chart["description"], "Type": chart["type"], "APIVersion": chart["apiVersion"]},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{"Version": "v1.29.0", "Major": "1", "Minor": "29", "GitVersion": "v1.29.0"},
			"APIVersions": apiVersions(append([]string{"v1", "apps/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1"}, o.apiVersions...)),
		},
	}
	return renderTemplates(o, fmt.Sprint(chart["name"]), top)
}

// renderTemplates parses every file under templates/ into one set (so include sees _helpers.tpl), then renders each
// file not starting with "_" in name order and prints its non-empty documents.
func renderTemplates(o options, chartName string, top map[string]interface{}) error {
	tdir := filepath.Join(o.chartDir, "templates")
	var names []string
	t := template.New("chart")
	err := filepath.Walk(tdir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(o.chartDir, p)
		name := chartName + "/" + filepath.ToSlash(rel)
		names = append(names, name)
		_, err = t.New(name).Funcs(funcMap(t)).Parse(string(src))
		return err
	})
	if err != nil {
		return err
	}
	// Helm's default: a missing value is the zero value, and the "<no value>" text/template prints becomes "".
	t.Option("missingkey=zero")
	sort.Strings(names)
	var out bytes.Buffer
	for _, name := range names {
		base := filepath.Base(name)
		if strings.HasPrefix(base, "_") {
			continue
		}
		data := map[string]interface{}{"Template": map[string]interface{}{"Name": name, "BasePath": chartName + "/templates"}}
		for k, v := range top {
			data[k] = v
		}
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, name, data); err != nil {
			return err
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if base == "NOTES.txt" {
			if o.notes {
				fmt.Fprint(os.Stderr, text)
			}
			continue
		}
		for _, doc := range splitDocuments(text) {
			var parsed interface{}
			if err := yaml.Unmarshal([]byte(doc), &parsed); err != nil {
				return fmt.Errorf("%s: rendered a document that is not YAML: %v\n%s", name, err, doc)
			}
			if parsed == nil { // only comments
				continue
			}
			fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", name, strings.Trim(doc, "\n "))
		}
	}
	_, err = os.Stdout.Write(out.Bytes())
	return err
}

func splitDocuments(text string) []string {
	var docs []string
	var cur []string
	for _, line := range strings.Split(text, "\n") {
		if strings.TrimRight(line, " ") == "---" {
			docs = append(docs, strings.Join(cur, "\n"))
			cur = nil
			continue
		}
		cur = append(cur, line)
	}
	docs = append(docs, strings.Join(cur, "\n"))
	var kept []string
	for _, d := range docs {
		if strings.TrimSpace(d) != "" {
			kept = append(kept, d)
		}
	}
	return kept
}

// funcMap is sprig's text functions less env/expandenv (Helm removes them: a chart must not read the renderer's
// environment), plus Helm's own.
func funcMap(t *template.Template) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	f["toYaml"] = func(v interface{}) string {
		b, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(b), "\n")
	}
	f["fromYaml"] = func(s string) map[string]interface{} {
		var m interface{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			return map[string]interface{}{"Error": err.Error()}
		}
		if mm, ok := normalize(m).(map[string]interface{}); ok {
			return mm
		}
		return map[string]interface{}{}
	}
	f["toJson"] = func(v interface{}) string {
		b, _ := json.Marshal(v)
		return string(b)
	}
	f["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := t.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	f["tpl"] = func(text string, data interface{}) (string, error) {
		clone, err := t.Clone()
		if err != nil {
			return "", err
		}
		inline, err := clone.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = inline.Execute(&buf, data)
		return strings.ReplaceAll(buf.String(), "<no value>", ""), err
	}
	f["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return v, fmt.Errorf("%s", msg)
		}
		return v, nil
	}
	f["lookup"] = func(apiVersion, kind, namespace, name string) map[string]interface{} {
		return map[string]interface{}{}
	}
	return f
}

type apiVersions []string

// Has answers `.Capabilities.APIVersions.Has "monitoring.coreos.com/v1"` as Helm does.
func (a apiVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

func checkSchema(path string, chartName interface{}, values map[string]interface{}) error {
	schema, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	res, err := gojsonschema.Validate(gojsonschema.NewBytesLoader(schema), gojsonschema.NewGoLoader(values))
	if err != nil {
		return fmt.Errorf("values.schema.json: %v", err)
	}
	if res.Valid() {
		return nil
	}
	var msg strings.Builder
	fmt.Fprintf(&msg, "values don't meet the specifications of the schema(s) in the following chart(s):\n%v:\n", chartName)
	for _, e := range res.Errors() {
		fmt.Fprintf(&msg, "- %s\n", e)
	}
	return fmt.Errorf("%s", strings.TrimRight(msg.String(), "\n"))
}

func readYAMLFile(path string) (map[string]interface{}, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var v interface{}
	if err := yaml.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	m, ok := normalize(v).(map[string]interface{})
	if v != nil && !ok {
		return nil, fmt.Errorf("%s: not a YAML mapping", path)
	}
	if m == nil {
		m = map[string]interface{}{}
	}
	return m, nil
}

// normalize turns yaml.v2's map[interface{}]interface{} into map[string]interface{}, which sprig's dict functions
// and the JSON schema validator expect, and integers into float64 as Helm's YAML-through-JSON reading leaves them
// (so a template that prints a large number without `int` shows 1e+06 here as it would under Helm).
func normalize(v interface{}) interface{} {
	switch x := v.(type) {
	case int:
		return float64(x)
	case int64:
		return float64(x)
	case map[interface{}]interface{}:
		m := make(map[string]interface{}, len(x))
		for k, val := range x {
			m[fmt.Sprint(k)] = normalize(val)
		}
		return m
	case []interface{}:
		for i := range x {
			x[i] = normalize(x[i])
		}
	}
	return v
}

// coalesce lays override over base as Helm merges -f files: maps merge key by key, anything else is replaced, and
// null deletes the key.
func coalesce(base, override map[string]interface{}) map[string]interface{} {
	for k, ov := range override {
		if ov == nil {
			delete(base, k)
			continue
		}
		bm, bIsMap := base[k].(map[string]interface{})
		om, oIsMap := ov.(map[string]interface{})
		if bIsMap && oIsMap {
			base[k] = coalesce(bm, om)
		} else {
			base[k] = ov
		}
	}
	return base
}

// applySet handles --set a.b.c=VALUE[,d.e=VALUE]: dotted keys into maps, VALUE typed as Helm types it (true/false,
// integers, null, else a string). List indices (a[0]) and escaped commas are not supported.
func applySet(values map[string]interface{}, expr string) error {
	for _, pair := range strings.Split(expr, ",") {
		eq := strings.Index(pair, "=")
		if eq <= 0 {
			return fmt.Errorf("--set %q: want key=value", pair)
		}
		path := strings.Split(pair[:eq], ".")
		m := values
		for _, k := range path[:len(path)-1] {
			next, ok := m[k].(map[string]interface{})
			if !ok {
				next = map[string]interface{}{}
				m[k] = next
			}
			m = next
		}
		m[path[len(path)-1]] = typedValue(pair[eq+1:])
	}
	return nil
}

func typedValue(s string) interface{} {
	switch s {
	case "true":
		return true
	case "false":
		return false
	case "null":
		return nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil && (s == "0" || !strings.HasPrefix(s, "0")) {
		return n
	}
	return s
}
