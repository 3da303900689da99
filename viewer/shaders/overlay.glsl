// Screen-space textured quad with alpha, used for the style-text overlay.
#if defined VERTEX_SHADER

in vec2 in_pos;               // normalised device coordinates
in vec2 in_uv;
out vec2 v_uv;

void main() {
    v_uv = in_uv;
    gl_Position = vec4(in_pos, 0.0, 1.0);
}

#elif defined FRAGMENT_SHADER

uniform sampler2D u_tex;      // RGBA, straight alpha
in vec2 v_uv;
out vec4 f_color;

void main() {
    f_color = texture(u_tex, v_uv);
}
#endif
