package main

import (
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
)

// noRedirects is an HTTP client that shows redirects instead of following
// them; jar, when not nil, keeps its cookies as a browser would.
func noRedirects(jar http.CookieJar) *http.Client {
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

var csrfInput = regexp.MustCompile(`name="csrf_token" value="([^"]+)"`)

// uiPage GETs a UI page with c and returns the response and its body.
func uiPage(t testing.TB, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(u)
	return readBody(t, resp, err)
}

// csrfOf returns the CSRF token a page rendered into its forms.
func csrfOf(t testing.TB, body string) string {
	t.Helper()
	m := csrfInput.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no CSRF field in the page:\n%s", body)
	}
	return html.UnescapeString(m[1])
}

// uiPost posts a form with c and returns the response and its body.
func uiPost(t testing.TB, c *http.Client, u string, form url.Values) (*http.Response, string) {
	t.Helper()
	resp, err := c.PostForm(u, form)
	return readBody(t, resp, err)
}

// readBody fails the test on a request error and returns the response with
// its whole body, closed.
func readBody(t testing.TB, resp *http.Response, err error) (*http.Response, string) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func setCookie(resp *http.Response, name string) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// uiLogin signs in through the sign-in form as a browser does and returns a
// client holding the session cookies.
func uiLogin(t testing.TB, in *instance, email, password string) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := noRedirects(jar)
	_, body := uiPage(t, c, in.URL+"/ui/login")
	resp, _ := uiPost(t, c, in.URL+"/ui/login", url.Values{"csrf_token": {csrfOf(t, body)}, "email": {email}, "password": {password}})
	if resp.StatusCode != http.StatusSeeOther || setCookie(resp, "atrium_at") == nil {
		t.Fatalf("sign in as %s: status %d", email, resp.StatusCode)
	}
	return c
}

func TestWebAuthGate(t *testing.T) {
	in := startCluster(t, 1)[0]
	loginAdmin(t, in)
	anon := noRedirects(nil)

	t.Run("anonymous pages redirect to sign in", func(t *testing.T) {
		for _, path := range []string{"/ui/overview", "/ui/users", "/ui/terminals", "/ui/settings", "/ui/audit", "/ui/sessions"} {
			resp, _ := uiPage(t, anon, in.URL+path)
			want := "/ui/login?next=" + url.QueryEscape(path)
			if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != want {
				t.Errorf("GET %s: %d to %q, want 303 to %q", path, resp.StatusCode, resp.Header.Get("Location"), want)
			}
		}
	})

	t.Run("an htmx fragment moves the whole page to sign in", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, in.URL+"/ui/overview/live", nil)
		req.Header.Set("HX-Request", "true")
		req.Header.Set("HX-Current-URL", in.URL+"/ui/overview")
		resp, err := anon.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("HX-Redirect"); got != "/ui/login?next=%2Fui%2Foverview" {
			t.Fatalf("HX-Redirect %q (status %d)", got, resp.StatusCode)
		}
	})

	t.Run("sign-in form without CSRF token is refused", func(t *testing.T) {
		jar, _ := cookiejar.New(nil)
		c := noRedirects(jar)
		uiPage(t, c, in.URL+"/ui/login") // the CSRF cookie, but the form field is left out
		resp, body := uiPost(t, c, in.URL+"/ui/login", url.Values{"email": {"admin@atrium.test"}, "password": {adminPassword}})
		if resp.StatusCode != http.StatusForbidden || setCookie(resp, "atrium_at") != nil {
			t.Fatalf("status %d, access cookie %v", resp.StatusCode, setCookie(resp, "atrium_at"))
		}
		if !strings.Contains(body, "sign-in form has expired") {
			t.Fatalf("no explanation in the page:\n%s", body)
		}
		// Nor does a token from another browser help.
		resp, _ = uiPost(t, c, in.URL+"/ui/login", url.Values{"csrf_token": {strings.Repeat("x", 43)},
			"email": {"admin@atrium.test"}, "password": {adminPassword}})
		if resp.StatusCode != http.StatusForbidden || setCookie(resp, "atrium_at") != nil {
			t.Fatalf("foreign token: status %d", resp.StatusCode)
		}
	})

	t.Run("wrong password shows the form again", func(t *testing.T) {
		jar, _ := cookiejar.New(nil)
		c := noRedirects(jar)
		_, page := uiPage(t, c, in.URL+"/ui/login?next=%2Fui%2Fusers")
		resp, body := uiPost(t, c, in.URL+"/ui/login", url.Values{"csrf_token": {csrfOf(t, page)},
			"email": {"admin@atrium.test"}, "password": {"not the password"}, "next": {"/ui/users"}})
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if setCookie(resp, "atrium_at") != nil || setCookie(resp, "atrium_rt") != nil {
			t.Fatal("a failed sign-in set a session cookie")
		}
		for _, want := range []string{`id="login-form"`, "Email or password is incorrect.", `value="admin@atrium.test"`, `value="/ui/users"`} {
			if !strings.Contains(body, want) {
				t.Errorf("page lacks %s", want)
			}
		}
	})

	t.Run("sign in sets strict HttpOnly cookies and goes on", func(t *testing.T) {
		jar, _ := cookiejar.New(nil)
		c := noRedirects(jar)
		_, page := uiPage(t, c, in.URL+"/ui/login")
		resp, _ := uiPost(t, c, in.URL+"/ui/login", url.Values{"csrf_token": {csrfOf(t, page)},
			"email": {"admin@atrium.test"}, "password": {adminPassword}, "next": {"/ui/users"}})
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/users" {
			t.Fatalf("status %d to %q", resp.StatusCode, resp.Header.Get("Location"))
		}
		at, rt := setCookie(resp, "atrium_at"), setCookie(resp, "atrium_rt")
		if at == nil || !at.HttpOnly || at.SameSite != http.SameSiteStrictMode || rt == nil || !rt.HttpOnly || rt.Path != "/ui/" {
			t.Fatalf("cookies: %+v %+v", at, rt)
		}
		if r, body := uiPage(t, c, in.URL+"/ui/users"); r.StatusCode != http.StatusOK || !strings.Contains(body, `data-user="admin@atrium.test"`) {
			t.Fatalf("users page: %d", r.StatusCode)
		}
	})

	t.Run("next cannot leave the UI", func(t *testing.T) {
		jar, _ := cookiejar.New(nil)
		c := noRedirects(jar)
		_, page := uiPage(t, c, in.URL+"/ui/login")
		for _, next := range []string{"https://evil.test/", "//evil.test/x", "/\\evil.test", "/ui/../api/v1/me", "/ui/%2e%2e/api/v1/me", "/ui/login"} {
			resp, _ := uiPost(t, c, in.URL+"/ui/login", url.Values{"csrf_token": {csrfOf(t, page)},
				"email": {"admin@atrium.test"}, "password": {adminPassword}, "next": {next}})
			if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || loc != "/" {
				t.Errorf("next %q: %d to %q, want /", next, resp.StatusCode, loc)
			}
		}
	})

	t.Run("an expired access cookie is renewed from the refresh cookie", func(t *testing.T) {
		c := uiLogin(t, in, "admin@atrium.test", adminPassword)
		base, _ := url.Parse(in.URL + "/ui/")
		var rt, csrf *http.Cookie
		for _, ck := range c.Jar.Cookies(base) {
			switch ck.Name {
			case "atrium_rt":
				rt = ck
			case "atrium_csrf":
				csrf = ck
			}
		}
		if rt == nil || csrf == nil {
			t.Fatal("no refresh or CSRF cookie after sign-in")
		}
		req, _ := http.NewRequest(http.MethodGet, in.URL+"/ui/terminals", nil)
		req.AddCookie(rt) // the access cookie has gone, as it does when it expires
		resp, err := noRedirects(nil).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || setCookie(resp, "atrium_at") == nil || setCookie(resp, "atrium_rt") == nil {
			t.Fatalf("status %d, cookies %v", resp.StatusCode, resp.Cookies())
		}
		// The refresh token rotated: the old one is spent, and a second use
		// (after the reuse grace) would end the session; here it just must
		// not be the one handed back.
		if setCookie(resp, "atrium_rt").Value == rt.Value {
			t.Fatal("refresh token did not rotate")
		}
	})

	t.Run("sign out ends the session on the server", func(t *testing.T) {
		cookie := func(c *http.Client, name string) *http.Cookie {
			base, _ := url.Parse(in.URL + "/ui/")
			for _, ck := range c.Jar.Cookies(base) {
				if ck.Name == name {
					return ck
				}
			}
			t.Fatalf("no %s cookie", name)
			return nil
		}
		// With the access cookie: the token it held stops working.
		c := uiLogin(t, in, "admin@atrium.test", adminPassword)
		at := cookie(c, "atrium_at").Value
		_, page := uiPage(t, c, in.URL+"/ui/sessions")
		resp, _ := uiPost(t, c, in.URL+"/ui/logout", url.Values{"csrf_token": {csrfOf(t, page)}})
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/login" {
			t.Fatalf("sign out: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
		}
		if r, _ := call(t, http.MethodGet, in.URL+"/api/v1/me", nil, bearer(at)); r.StatusCode != http.StatusUnauthorized {
			t.Fatalf("the signed-out access token still works: %d", r.StatusCode)
		}
		if r, _ := uiPage(t, c, in.URL+"/ui/users"); r.StatusCode != http.StatusSeeOther {
			t.Fatalf("after sign-out /ui/users: %d", r.StatusCode)
		}

		// With only the refresh cookie left (the access cookie expired): the
		// refresh token stops working.
		c = uiLogin(t, in, "admin@atrium.test", adminPassword)
		rt, csrf := cookie(c, "atrium_rt"), cookie(c, "atrium_csrf")
		req, _ := http.NewRequest(http.MethodPost, in.URL+"/ui/logout", strings.NewReader(url.Values{"csrf_token": {csrf.Value}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.AddCookie(rt)
		req.AddCookie(csrf)
		if resp, err := noRedirects(nil).Do(req); err != nil || resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("sign out with the refresh cookie only: %v %v", resp, err)
		}
		req, _ = http.NewRequest(http.MethodGet, in.URL+"/ui/users", nil)
		req.AddCookie(rt)
		resp, err := noRedirects(nil).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if at := setCookie(resp, "atrium_at"); resp.StatusCode != http.StatusSeeOther || (at != nil && at.Value != "") {
			t.Fatalf("the signed-out refresh cookie still renews the session: %d", resp.StatusCode)
		}
	})

	t.Run("a viewer gets a 403 page, not a 500", func(t *testing.T) {
		loginAs(t, in, "viewer@atrium.test", adminPassword, "viewer", "")
		c := uiLogin(t, in, "viewer@atrium.test", adminPassword)
		for _, path := range []string{"/ui/settings", "/ui/audit", "/ui/overview"} {
			resp, body := uiPage(t, c, in.URL+path)
			if resp.StatusCode != http.StatusForbidden || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
				t.Errorf("GET %s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
				continue
			}
			if !strings.Contains(body, "Access denied") || !strings.Contains(body, `data-testid="me">viewer@atrium.test`) {
				t.Errorf("GET %s: not the access-denied page:\n%s", path, body)
			}
			if strings.Contains(body, `href="/ui/settings"`) {
				t.Errorf("GET %s: the navigation offers a viewer the settings", path)
			}
		}
		// A viewer may read users, but the create form is not offered and
		// posting it anyway is refused.
		resp, body := uiPage(t, c, in.URL+"/ui/users")
		if resp.StatusCode != http.StatusOK || strings.Contains(body, `id="create-user"`) {
			t.Fatalf("users page for a viewer: %d, create form shown: %v", resp.StatusCode, strings.Contains(body, `id="create-user"`))
		}
		resp, _ = uiPost(t, c, in.URL+"/ui/users", url.Values{"csrf_token": {csrfOf(t, body)},
			"email": {"x@atrium.test"}, "password": {adminPassword}})
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("viewer creating a user: %d", resp.StatusCode)
		}
		// Home sends a viewer to the first page they may open: payments
		// (payments:read) come before users in the navigation.
		if resp, _ := uiPage(t, c, in.URL+"/"); resp.Header.Get("Location") != "/ui/payments" {
			t.Fatalf("home sends a viewer to %q", resp.Header.Get("Location"))
		}
	})

	t.Run("signed-in form posts need the CSRF token", func(t *testing.T) {
		c := uiLogin(t, in, "admin@atrium.test", adminPassword)
		resp, _ := uiPost(t, c, in.URL+"/ui/settings/keys/rotate", url.Values{})
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("rotate without CSRF token: %d", resp.StatusCode)
		}
		_, page := uiPage(t, c, in.URL+"/ui/settings")
		before := currentKID(t, page)
		resp, _ = uiPost(t, c, in.URL+"/ui/settings/keys/rotate", url.Values{"csrf_token": {csrfOf(t, page)}})
		if resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("rotate: %d", resp.StatusCode)
		}
		_, page = uiPage(t, c, in.URL+"/ui/settings")
		if after := currentKID(t, page); after == before {
			t.Fatalf("the current key is still %s after rotating", after)
		}
		if !strings.Contains(page, "Signing keys rotated") {
			t.Fatal("no confirmation after rotating")
		}
	})
}

func TestWebUserAdmin(t *testing.T) {
	in := startCluster(t, 1)[0]
	loginAdmin(t, in)
	c := uiLogin(t, in, "admin@atrium.test", adminPassword)
	_, page := uiPage(t, c, in.URL+"/ui/users")
	token := csrfOf(t, page)
	post := func(path string, form url.Values) (*http.Response, string) {
		t.Helper()
		form.Set("csrf_token", token)
		return uiPost(t, c, in.URL+path, form)
	}
	follow := func(resp *http.Response) string {
		t.Helper()
		if resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("status %d, want 303", resp.StatusCode)
		}
		_, body := uiPage(t, c, in.URL+resp.Header.Get("Location"))
		return body
	}
	signInStatus := func(email, password string) int {
		t.Helper()
		jar, _ := cookiejar.New(nil)
		b := noRedirects(jar)
		_, page := uiPage(t, b, in.URL+"/ui/login")
		resp, _ := uiPost(t, b, in.URL+"/ui/login", url.Values{"csrf_token": {csrfOf(t, page)}, "email": {email}, "password": {password}})
		return resp.StatusCode
	}

	// A refused form comes back with the problem and what was typed, but
	// not the password.
	resp, body := post("/ui/users", url.Values{"email": {"ana@atrium.test"}, "password": {"short"}, "roles": {"operator"}})
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "Password must be") ||
		!strings.Contains(body, `value="ana@atrium.test"`) || strings.Contains(body, `value="short"`) {
		t.Fatalf("invalid user: %d\n%s", resp.StatusCode, body)
	}

	resp, _ = post("/ui/users", url.Values{"email": {"ana@atrium.test"}, "password": {"ana's long password"}, "roles": {"operator"}})
	userPage := resp.Header.Get("Location")
	body = follow(resp)
	if !strings.Contains(body, "User ana@atrium.test created.") || !strings.Contains(body, `data-testid="user-status">active`) {
		t.Fatalf("new user page:\n%s", body)
	}
	if !regexp.MustCompile(`value="operator" checked`).MatchString(body) {
		t.Fatal("the new user's role is not ticked")
	}

	resp, _ = post(userPage+"/roles", url.Values{"roles": {"viewer", "operator"}})
	if body = follow(resp); !strings.Contains(body, "Roles of ana@atrium.test saved: operator, viewer.") {
		t.Fatalf("roles not saved:\n%s", body)
	}

	resp, _ = post(userPage+"/status", url.Values{"status": {"disabled"}})
	if body = follow(resp); !strings.Contains(body, `data-testid="user-status">disabled`) {
		t.Fatal("user not shown as disabled")
	}
	if got := signInStatus("ana@atrium.test", "ana's long password"); got != http.StatusUnauthorized {
		t.Fatalf("a disabled user signs in: %d", got)
	}

	resp, _ = post(userPage+"/status", url.Values{"status": {"active"}})
	follow(resp)
	resp, _ = post(userPage+"/password", url.Values{"password": {"a brand new password"}, "confirm": {"a different one!!"}})
	if body = follow(resp); !strings.Contains(body, "Confirm does not match the new password.") {
		t.Fatalf("mismatched passwords accepted:\n%s", body)
	}
	resp, _ = post(userPage+"/password", url.Values{"password": {"a brand new password"}, "confirm": {"a brand new password"}})
	follow(resp)
	if got := signInStatus("ana@atrium.test", "a brand new password"); got != http.StatusSeeOther {
		t.Fatalf("sign in with the reset password: %d", got)
	}

	// An administrator sees the user's sessions, the one just opened.
	_, body = uiPage(t, c, in.URL+userPage+"/sessions")
	if n := strings.Count(body, "data-session="); n != 1 || !strings.Contains(body, `data-testid="state">active`) {
		t.Fatalf("%d sessions listed for ana:\n%s", n, body)
	}
}

var currentKey = regexp.MustCompile(`data-kid="([^"]+)" data-state="current"`)

// currentKID is the key the settings page shows as current.
func currentKID(t testing.TB, page string) string {
	t.Helper()
	m := currentKey.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no current key on the settings page:\n%s", page)
	}
	return m[1]
}
