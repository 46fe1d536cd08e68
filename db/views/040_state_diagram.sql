-- 040_state_diagram: the state diagram, generated from the transition table (Graphviz DOT).

-- state_diagram: the states and allowed transitions of an instance as Graphviz DOT, from
-- pki.state_transitions: SELECT dot FROM state_diagram;  |  dot -Tsvg -o states.svg
-- Top to bottom, the rules wrapped at 16 characters: the picture reads at README width.
CREATE VIEW pki.state_diagram AS
SELECT concat_ws(E'\n',
        'digraph certinstance_states {',
        '  rankdir=TB; nodesep=0.25; node [shape=box, style=rounded]; edge [fontsize=10];',
        '  "(none)" [shape=point]; "(deleted)" [shape=doublecircle, label=""];',
        string_agg(format('  "%s" -> "%s" [label="%s"];',
                          coalesce(t.from_state::text, '(none)'), coalesce(t.to_state::text, '(deleted)'),
                          -- DOT's \n ends a label line: one after every run of up to 16 characters
                          regexp_replace(regexp_replace(replace(t.rule, '"', '\"'), '(.{1,16})(\s+|$)', '\1\\n', 'g'),
                                         '\\n$', '')),
                   E'\n' ORDER BY t.from_state NULLS FIRST, t.to_state NULLS LAST),
        '}') AS dot
  FROM pki.state_transitions t;
