-- 040_state_diagram: the state diagram, generated from the transition table (Graphviz DOT).

-- state_diagram: the states and allowed transitions of an instance as Graphviz DOT, from
-- pki.state_transitions: SELECT dot FROM state_diagram;  |  dot -Tpng -o states.png
CREATE VIEW pki.state_diagram AS
SELECT concat_ws(E'\n',
        'digraph certinstance_states {',
        '  rankdir=LR; node [shape=box, style=rounded];',
        '  "(none)" [shape=point]; "(deleted)" [shape=doublecircle, label=""];',
        string_agg(format('  "%s" -> "%s" [label="%s"];',
                          coalesce(t.from_state::text, '(none)'), coalesce(t.to_state::text, '(deleted)'),
                          replace(t.rule, '"', '\"')),
                   E'\n' ORDER BY t.from_state NULLS FIRST, t.to_state NULLS LAST),
        '}') AS dot
  FROM pki.state_transitions t;
