query = """
SELECT *
FROM users # not a comment
WHERE name = 'x'
"""
String.split(query, "\n", trim: true)
# ---
template = '''
  hello
    charlist
  '''
length(template)
# ---
regex = ~r/^\d{3}-\d{4}$/
Regex.match?(regex, "555-1234")
# ---
raw = ~S"""
no #{interpolation} here
and a \n stays
"""
words = ~w(alpha beta gamma)a
# ---
multi = "first line
second line # still the string
third line"
String.split(multi, "\n")
# ---
hash = "#not-a-comment"
url = "http://example.com/#anchor"
{hash, url}
# ---
name = "world"
greeting = "Hello, #{name}! #{String.upcase("#{name}")}"
# ---
sigil = ~s{parens (nested) and "quotes"}
other = ~c[brackets]
{sigil, other}
# ---
csv = """
a,b,c
1,2,3
"""
csv
|> String.split("\n", trim: true)
|> Enum.map(&String.split(&1, ","))
# ---
char = ?a
escaped = "tab\there \"quoted\" back\\slash"
{char, escaped}
# ---
message = "semi; colons; inside" ; count = 3
String.duplicate(message, count)
# ---
ëlan = "unicode names"; naïve = 1
{ëlan, naïve}
