// Stand-in for "@shopify/web-pixels-extension" (shared docs web-pixels.md section 2): `register`
// hands the pixel's callback to the harness, which calls it with the pixel API.
export const registered = { callback: null };

export function register(callback) {
  registered.callback = callback;
}
