// Head shader: smooth-shaded, key + fill + rim light, wrap diffuse for a soft skin look.
// One file, two stages; render.py prepends "#version 330" and a VERTEX_SHADER / FRAGMENT_SHADER define.
#if defined VERTEX_SHADER

uniform mat4 u_view_proj;     // world (metres) -> clip
in vec3 in_position;          // world position (m)
in vec3 in_normal;            // unnormalised vertex normal
in vec3 in_color;             // albedo, linear RGB
in float in_spec;             // specular strength 0..1
out vec3 v_pos;
out vec3 v_normal;
out vec3 v_color;
out float v_spec;

void main() {
    v_pos = in_position;
    v_normal = in_normal;
    v_color = in_color;
    v_spec = in_spec;
    gl_Position = u_view_proj * vec4(in_position, 1.0);
}

#elif defined FRAGMENT_SHADER

uniform vec3 u_eye;           // camera position (m)
uniform vec3 u_key_dir;       // unit vectors toward each light
uniform vec3 u_fill_dir;
uniform vec3 u_rim_dir;
uniform vec3 u_interior;      // colour of back faces seen through the open mouth (linear RGB)
in vec3 v_pos;
in vec3 v_normal;
in vec3 v_color;
in float v_spec;
out vec4 f_color;

float wrap_diffuse(vec3 n, vec3 l, float w) {
    return max((dot(n, l) + w) / (1.0 + w), 0.0);
}

void main() {
    vec3 n = normalize(v_normal);
    vec3 v = normalize(u_eye - v_pos);
    if (!gl_FrontFacing) {                       // inside of the head: a dark mouth cavity
        float d = 0.35 + 0.65 * max(dot(-n, v), 0.0);
        f_color = vec4(pow(u_interior * d, vec3(1.0 / 2.2)), 1.0);
        return;
    }
    vec3 key_col = vec3(1.00, 0.96, 0.90) * 1.05;
    vec3 fill_col = vec3(0.55, 0.62, 0.75) * 0.45;
    vec3 rim_col = vec3(0.85, 0.90, 1.00) * 0.55;
    float hemi = 0.5 + 0.5 * n.y;
    vec3 ambient = mix(vec3(0.10, 0.08, 0.08), vec3(0.16, 0.17, 0.20), hemi);

    vec3 light = ambient
        + key_col * wrap_diffuse(n, u_key_dir, 0.25)
        + fill_col * wrap_diffuse(n, u_fill_dir, 0.5);
    float rim = pow(1.0 - max(dot(n, v), 0.0), 3.0) * max(dot(n, u_rim_dir) + 0.15, 0.0);
    vec3 col = v_color * light + rim_col * rim * 0.4;

    vec3 h = normalize(u_key_dir + v);
    float shin = mix(18.0, 80.0, v_spec);
    float spec = v_spec * pow(max(dot(n, h), 0.0), shin) * (shin + 8.0) / 40.0;
    col += key_col * spec * 0.35;
    f_color = vec4(pow(clamp(col, 0.0, 1.0), vec3(1.0 / 2.2)), 1.0);
}
#endif
