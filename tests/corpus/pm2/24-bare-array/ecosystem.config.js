module.exports = [
  { name: 'one', script: 'one.js' },
  { name: 'two', script: 'two.js' },
];
